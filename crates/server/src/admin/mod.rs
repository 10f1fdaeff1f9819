//! The admin listener (docs/admin.md): `/metrics` for Prometheus, a JSON API, and the status page at `/`, over
//! HTTP/1.1 (axum on hyper) on its own address, 127.0.0.1:9260 by default.
//!
//! Who may ask:
//! - Every request must name the target by an IP address or `localhost` in its Host header, and a request that
//!   carries an Origin must come from the page this listener serves. A web page the operator's browser has open
//!   elsewhere can then neither read the API through a DNS name rebound to this address (DNS rebinding) nor
//!   change anything by posting to it (CSRF).
//! - On any address but loopback a bearer token is required, read from a file only its owner can read (0600).
//!   The status page itself loads without it, asks for it once, and keeps it in the browser session.
//! - Requests that change state (fault injection) are routed only when some target has fault injection enabled,
//!   and refused for a target that has not.

mod exposition;
pub mod lockspace;
pub mod snapshot;

use crate::config::ServeError;
use crate::server::Shared;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// The default admin address: loopback only, so nothing but this host reaches it without a token.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9260";

/// `--admin ADDR:PORT | none` and `--admin-token-file FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// None: no admin listener.
    pub listen: Option<SocketAddr>,
    /// The bearer token's file; required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: Some(
                DEFAULT_ADMIN_ADDRESS
                    .parse()
                    .expect("valid default address"),
            ),
            token_file: None,
        }
    }
}

/// Why the admin listener cannot start: one line for the user, naming the address or the file.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for the admin API on {address}: {error} (--admin ADDR:PORT moves it, --admin none turns it off)")]
    Bind {
        address: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("the admin API on {address} is reachable from other hosts: give --admin-token-file FILE (a token in a file of mode 0600)")]
    TokenRequired { address: SocketAddr },
    #[error("admin token file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
}

impl From<AdminError> for ServeError {
    fn from(error: AdminError) -> ServeError {
        ServeError::Invalid(error.to_string())
    }
}

/// The shortest token accepted: 128 bits as hex.
const MIN_TOKEN_LENGTH: usize = 32;

/// Reads the bearer token: the file must be a regular file that only its owner can read or write.
pub fn read_token(path: &FsPath) -> Result<String, AdminError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |reason: String| AdminError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| failed(e.to_string()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if !metadata.is_file() {
        return Err(failed("not a regular file".into()));
    }
    if mode & 0o077 != 0 {
        return Err(failed(format!(
            "mode {mode:04o} lets others read it; chmod 600 it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let token = text.trim().to_string();
    if token.len() < MIN_TOKEN_LENGTH || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(failed(format!(
            "the token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces"
        )));
    }
    Ok(token)
}

struct AdminState {
    shared: Arc<Shared>,
    lockspaces: Arc<lockspace::Watcher>,
    token: Option<String>,
}

/// A started admin listener; dropping it stops it.
pub struct AdminServer {
    pub address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the admin listener and serves it in the background. None when `settings.listen` is None.
pub async fn start(
    shared: Arc<Shared>,
    settings: &AdminSettings,
) -> Result<Option<AdminServer>, AdminError> {
    let Some(address) = settings.listen else {
        return Ok(None);
    };
    let token = match &settings.token_file {
        Some(path) => Some(read_token(path)?),
        None if !address.ip().is_loopback() => return Err(AdminError::TokenRequired { address }),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| AdminError::Bind { address, error })?;
    let bound = listener
        .local_addr()
        .map_err(|error| AdminError::Bind { address, error })?;
    let lockspaces = Arc::new(lockspace::Watcher::default());
    let state = Arc::new(AdminState {
        shared: Arc::clone(&shared),
        lockspaces: Arc::clone(&lockspaces),
        token,
    });
    let (stop, mut stopped) = watch::channel(false);
    let app = router(Arc::clone(&state));
    let serving = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("admin listener failed: {e}");
        }
    });
    let watching = tokio::spawn(lockspaces.run(shared));
    tracing::info!(
        "admin API, metrics and status page on http://{bound}/{}",
        if state.token.is_some() {
            " (bearer token required)"
        } else {
            ""
        }
    );
    Ok(Some(AdminServer {
        address: bound,
        stop,
        tasks: vec![serving, watching],
    }))
}

fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/", get(page))
        .route("/status.js", get(script))
        .route("/status.css", get(stylesheet))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/sessions", get(sessions))
        .route(
            "/api/v1/targets/{target}/luns/{lun}/reservations",
            get(reservations),
        );
    let faults = if state.shared.targets.iter().any(|t| t.faults.enabled()) {
        get(list_faults).post(add_fault).delete(clear_faults)
    } else {
        get(list_faults)
    };
    api.route("/api/v1/targets/{target}/faults", faults)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}

/// Why a request is refused: its status, and the JSON body `{"error": ...}` that says why.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The Host, Origin and token checks every request passes before its handler (see the module comment).
async fn guard(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if let Err(refusal) = check_request(
        &state,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        return refusal.into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

fn check_request(
    state: &AdminState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "a Host header is required"))?;
    if !host_names_an_address(host) {
        return Err(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Host {host:?}: the admin API answers only requests addressed to an IP address or localhost"),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().is_ok_and(|o| o == format!("http://{host}"));
        if !same {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused",
            ));
        }
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|site| !matches!(site, "same-origin" | "none"));
    if cross_site {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "cross-site requests are refused",
        ));
    }
    let open_to_all = *method == Method::GET && matches!(path, "/" | "/status.js" | "/status.css");
    if let (Some(token), false) = (&state.token, open_to_all) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required",
            ));
        }
    }
    Ok(())
}

/// A Host header naming an IP address or localhost, with or without a port. A DNS name is refused: it is what a
/// rebinding attack would send.
fn host_names_an_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, rest)) if rest.is_empty() || rest.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLESHEET: &str = include_str!("page/status.css");

/// The page loads its script and style from this listener only, and nothing else (no external assets).
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        PAGE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match exposition::render(&state.shared) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
        .into_response(),
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    Json(snapshot::overview(&state.shared, &state.lockspaces)).into_response()
}

async fn targets(State(state): State<Arc<AdminState>>) -> Response {
    Json(snapshot::overview(&state.shared, &state.lockspaces).targets).into_response()
}

async fn sessions(State(state): State<Arc<AdminState>>) -> Response {
    Json(snapshot::overview(&state.shared, &state.lockspaces).sessions).into_response()
}

fn served<'a>(
    state: &'a AdminState,
    target: &str,
) -> Result<&'a crate::server::ServedTarget, Refusal> {
    state
        .shared
        .target(target)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no target {target}")))
}

async fn reservations(
    State(state): State<Arc<AdminState>>,
    Path((target, lun)): Path<(String, u64)>,
) -> Response {
    let served = match served(&state, &target) {
        Ok(served) => served,
        Err(refusal) => return refusal.into_response(),
    };
    match served.luns.get(&lun) {
        Some(runtime) => Json(snapshot::pr_view(&runtime.unit.pr_state())).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("target {target} has no LUN {lun}"),
        )
        .into_response(),
    }
}

#[derive(serde::Serialize)]
struct FaultView {
    rule: String,
    matched: u64,
    hits: u64,
}

async fn list_faults(State(state): State<Arc<AdminState>>, Path(target): Path<String>) -> Response {
    let served = match served(&state, &target) {
        Ok(served) => served,
        Err(refusal) => return refusal.into_response(),
    };
    let rules: Vec<FaultView> = served
        .faults
        .snapshot()
        .into_iter()
        .map(|rule| FaultView {
            rule: rule.rule.to_string(),
            matched: rule.matched,
            hits: rule.hits,
        })
        .collect();
    Json(serde_json::json!({ "enabled": served.faults.enabled(), "rules": rules })).into_response()
}

/// The fault table of a target that accepts fault injection.
fn injectable<'a>(
    state: &'a AdminState,
    target: &str,
) -> Result<&'a crate::fault::FaultTable, Refusal> {
    let served = served(state, target)?;
    if !served.faults.enabled() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("fault injection is not enabled for target {target}"),
        ));
    }
    Ok(&served.faults)
}

#[derive(serde::Deserialize)]
struct NewFault {
    /// A rule in the text form of docs/fault-injection.md.
    rule: String,
}

async fn add_fault(
    State(state): State<Arc<AdminState>>,
    Path(target): Path<String>,
    Json(body): Json<NewFault>,
) -> Response {
    let faults = match injectable(&state, &target) {
        Ok(faults) => faults,
        Err(refusal) => return refusal.into_response(),
    };
    let added = crate::fault::FaultRule::parse(&body.rule)
        .map_err(|e| e.to_string())
        .and_then(|rule| faults.add(rule));
    match added {
        Ok(()) => {
            tracing::info!("admin API: fault rule {} added to {target}", body.rule);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "added": body.rule })),
            )
                .into_response()
        }
        Err(reason) => refuse(StatusCode::UNPROCESSABLE_ENTITY, reason).into_response(),
    }
}

async fn clear_faults(
    State(state): State<Arc<AdminState>>,
    Path(target): Path<String>,
) -> Response {
    let faults = match injectable(&state, &target) {
        Ok(faults) => faults,
        Err(refusal) => return refusal.into_response(),
    };
    let cleared = faults.clear();
    tracing::info!("admin API: {cleared} fault rule(s) cleared on {target}");
    Json(serde_json::json!({ "cleared": cleared })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_pass_as_host() {
        for host in [
            "127.0.0.1:9260",
            "localhost:9260",
            "LOCALHOST",
            "[::1]:9260",
            "[::1]",
            "10.0.0.7",
        ] {
            assert!(host_names_an_address(host), "{host}");
        }
        for host in [
            "evil.example:9260",
            "localhost.evil.example",
            "[::1]x",
            "",
            "127.0.0.1.nip.io:9260",
        ] {
            assert!(!host_names_an_address(host), "{host}");
        }
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_token(&path).unwrap_err().to_string();
        assert!(
            refused.contains("mode 0644") && refused.contains("token"),
            "{refused}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_token(&path).unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_token(&path)
            .unwrap_err()
            .to_string()
            .contains("at least 32"));
    }
}
