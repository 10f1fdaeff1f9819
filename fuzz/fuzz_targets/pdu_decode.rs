//! `lunlock_iscsi::pdu::{frame_length, decode}` on arbitrary bytes, digest settings and limits.
//!
//! Asserts: no panic; `frame_length` and `decode` agree on the frame's length; a decoded PDU respects the limit and
//! its own length fields; re-encoding a decoded PDU gives `wire_length` bytes that decode to the same PDU, every
//! strict prefix of which is "incomplete" (never an error); a stream of PDUs decodes one after the other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunlock_iscsi::pdu::{self, padded, Digests, FrameError, BHS_LEN, MAX_DATA_SEGMENT_FIELD};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((limit_bytes, buf)) = rest.split_first_chunk::<3>() else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    // The limit is a negotiated MaxRecvDataSegmentLength (512..2^24-1) most of the time, any u32 otherwise.
    let raw_limit = u32::from_be_bytes([0, limit_bytes[0], limit_bytes[1], limit_bytes[2]]);
    let limit = if flags & 4 != 0 {
        raw_limit.wrapping_mul(0x0101_0101)
    } else {
        raw_limit.clamp(512, MAX_DATA_SEGMENT_FIELD)
    };

    let framed = pdu::frame_length(buf, digests, limit);
    let decoded = pdu::decode(buf, digests, limit);
    match (&framed, &decoded) {
        (Ok(None), Ok(None)) => {}
        (Ok(Some(total)), Ok(Some((pdu, used)))) => {
            assert_eq!(total, used, "frame_length and decode disagree");
            check_decoded(pdu, *used, buf, digests, limit);
        }
        // Only the data digest is left to decode once the frame is complete.
        (Ok(Some(total)), Err(FrameError::DataDigest { frame_length, .. })) => {
            assert!(digests.data);
            assert_eq!(total, frame_length);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "frame_length and decode report different errors"),
        other => panic!("frame_length and decode disagree: {other:?}"),
    }

    // A stream: decode PDUs one after the other until the bytes run out or one is refused.
    let mut at = 0;
    let mut count = 0;
    while let Ok(Some((_, used))) = pdu::decode(&buf[at..], digests, limit) {
        assert!(used >= BHS_LEN && at + used <= buf.len());
        at += used;
        count += 1;
    }
    assert!(count <= buf.len() / BHS_LEN);
});

fn check_decoded(pdu: &pdu::Pdu, used: usize, buf: &[u8], digests: Digests, limit: u32) {
    assert!(used <= buf.len() && used >= BHS_LEN);
    assert_eq!(used % 4, 0, "frames are whole 4-byte words");
    assert!(pdu.data.len() as u64 <= limit as u64, "data segment above the limit");
    assert_eq!(pdu.data.len(), pdu.data_segment_length() as usize);
    assert_eq!(pdu.ahs.len(), pdu.total_ahs_length());
    assert_eq!(pdu.bhs[..], buf[..BHS_LEN]);
    assert_eq!(used, pdu.wire_length(digests));
    if !pdu.data.is_empty() {
        let start = BHS_LEN + pdu.ahs.len() + if digests.header { 4 } else { 0 };
        assert_eq!(pdu.data[..], buf[start..start + pdu.data.len()]);
        assert!(start + padded(pdu.data.len()) <= used);
    }

    // Round trip: encode, decode again, same PDU; only padding bytes may differ from the input.
    let bytes = pdu.to_bytes(digests);
    assert_eq!(bytes.len(), pdu.wire_length(digests));
    let (again, again_used) = pdu::decode(&bytes, digests, limit)
        .expect("a re-encoded PDU decodes")
        .expect("a re-encoded PDU is complete");
    assert_eq!(again_used, bytes.len());
    assert_eq!(&again, pdu, "decode(encode(pdu)) != pdu");
    assert_eq!(again.to_bytes(digests), bytes, "encoding is not stable");
    // Strict prefixes are incomplete, never malformed.
    for cut in [0, 1, BHS_LEN - 1, BHS_LEN, bytes.len() / 2, bytes.len() - 1] {
        if cut < bytes.len() {
            assert_eq!(
                pdu::decode(&bytes[..cut], digests, limit),
                Ok(None),
                "prefix of {cut} of {} bytes",
                bytes.len()
            );
        }
    }
}
