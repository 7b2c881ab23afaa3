//! Puts [`Message`]s on the wire and takes them off again.
//!
//! A frame is a MessagePack array of two items: the protocol's name (a string) and the message
//! itself as rmp-serde writes it (structs as arrays, enums by variant name). Decoding checks the
//! name, decodes the message and insists that nothing follows it, so truncated frames, garbage,
//! trailing bytes and frames of another protocol are all [`ProtocolError`]s, never panics.

use std::io::Cursor;

use crate::protocols::Message;

/// A frame that cannot be a message of the expected protocol, or a message that cannot be
/// encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is larger than the socket allows.
    #[error("{protocol}: message of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// The protocol expected on the socket.
        protocol: &'static str,
        /// The frame's size.
        size: usize,
        /// The socket's limit.
        limit: usize,
    },
    /// The frame belongs to another protocol.
    #[error("{expected}: received a message of protocol {found:?}")]
    WrongProtocol {
        /// The protocol expected on the socket.
        expected: &'static str,
        /// The name the frame carried.
        found: String,
    },
    /// The frame does not decode into a message of the protocol.
    #[error("{protocol}: undecodable message: {reason}")]
    Malformed {
        /// The protocol expected on the socket.
        protocol: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The multipart structure around the message is wrong (frame count, delimiters).
    #[error("{protocol}: invalid message structure: {reason}")]
    Structure {
        /// The protocol expected on the socket.
        protocol: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A message could not be encoded.
    #[error("{protocol}: cannot encode message: {reason}")]
    Encode {
        /// The message's protocol.
        protocol: &'static str,
        /// What the encoder said.
        reason: String,
    },
}

/// Encodes a message into a frame.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Encodes a message, appending to `buf` (which is cleared first).
pub fn encode_into<M: Message>(msg: &M, buf: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let fail = |reason: String| ProtocolError::Encode { protocol: M::NAME, reason };
    buf.clear();
    rmp::encode::write_array_len(buf, 2).map_err(|e| fail(e.to_string()))?;
    rmp::encode::write_str(buf, M::NAME).map_err(|e| fail(e.to_string()))?;
    rmp_serde::encode::write(buf, msg).map_err(|e| fail(e.to_string()))
}

/// Decodes a frame into a message of protocol `M`.
pub fn decode<M: Message>(frame: &[u8]) -> Result<M, ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed { protocol: M::NAME, reason };
    let mut cursor = Cursor::new(frame);
    let len = rmp::decode::read_array_len(&mut cursor)
        .map_err(|e| malformed(format!("no message envelope ({e})")))?;
    if len != 2 {
        return Err(malformed(format!("envelope of {len} items, expected 2")));
    }
    let rest = &frame[cursor.position() as usize..];
    let (name, rest) = rmp::decode::read_str_from_slice(rest)
        .map_err(|e| malformed(format!("no protocol name ({e:?})")))?;
    if name != M::NAME {
        return Err(ProtocolError::WrongProtocol { expected: M::NAME, found: name.to_string() });
    }
    let mut remaining = rest;
    let msg = M::deserialize(&mut rmp_serde::Deserializer::new(&mut remaining)).map_err(|e| malformed(e.to_string()))?;
    let trailing = remaining.len();
    if trailing != 0 {
        return Err(malformed(format!("{trailing} bytes after the message")));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::*;
    use proptest::prelude::*;

    /// Every message survives encode → decode → encode byte for byte (byte equality also
    /// covers floats such as NaN that `==` cannot compare).
    fn round_trips<M: Message>(msg: &M) -> Result<(), TestCaseError> {
        let frame = encode(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: M = decode(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = encode(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(frame, again);
        Ok(())
    }

    macro_rules! round_trip_tests {
        ($($name:ident: $ty:ty),* $(,)?) => {
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                $(#[test] fn $name(msg: $ty) { round_trips(&msg)?; })*
            }
        };
    }

    round_trip_tests!(
        task_control: TaskControl,
        control_request: ControlRequest,
        control_reply: ControlReply,
        status_event: StatusEvent,
        slave_command: SlaveCommand,
        slave_command_reply: SlaveCommandReply,
        slave_request: SlaveRequest,
        slave_reply: SlaveReply,
        file_request: FileRequest,
        file_reply: FileReply,
        fs_request: FsRequest,
        fs_reply: FsReply,
        db_request: DbRequest,
        db_reply: DbReply,
        build_queue_update: BuildQueueUpdate,
        architect_trigger: ArchitectTrigger,
        delete_notice: DeleteNotice,
        delete_ack: DeleteAck,
        stats_update: StatsUpdate,
        web_request: WebRequest,
        web_reply: WebReply,
        admin_request: AdminRequest,
        admin_reply: AdminReply,
        log_request: LogRequest,
        log_reply: LogReply,
    );

    proptest! {
        /// Every proper prefix of a valid frame is an error, not a panic.
        #[test]
        fn truncated_frames_are_errors(msg: SlaveRequest) {
            let frame = encode(&msg).unwrap();
            for cut in 0..frame.len() {
                prop_assert!(decode::<SlaveRequest>(&frame[..cut]).is_err(), "prefix {} decoded", cut);
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<DbRequest>(&bytes);
            let _ = decode::<SlaveRequest>(&bytes);
            let _ = decode::<FileRequest>(&bytes);
        }
    }

    #[test]
    fn wrong_protocol_is_named() {
        let frame = encode(&TaskControl::Quit).unwrap();
        let err = decode::<ControlRequest>(&frame).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::WrongProtocol { expected: "ControlRequest", found: "TaskControl".into() }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&TaskControl::Pause).unwrap();
        frame.push(0xc0);
        let err = decode::<TaskControl>(&frame).unwrap_err();
        assert!(err.to_string().contains("1 bytes after the message"), "{err}");
    }

    #[test]
    fn garbage_and_empty_frames_are_malformed() {
        for frame in [&b""[..], b"hello world", &[0x92, 0xa3][..], &[0x91, 0xc0][..]] {
            let err = decode::<TaskControl>(frame).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed { protocol: "TaskControl", .. }), "{err:?}");
        }
    }

    #[test]
    fn unknown_variant_is_malformed() {
        // A well-formed envelope naming the right protocol but carrying a variant it lacks.
        let mut frame = Vec::new();
        rmp::encode::write_array_len(&mut frame, 2).unwrap();
        rmp::encode::write_str(&mut frame, "TaskControl").unwrap();
        rmp::encode::write_str(&mut frame, "Explode").unwrap();
        let err = decode::<TaskControl>(&frame).unwrap_err();
        assert!(err.to_string().contains("Explode"), "{err}");
    }

    #[test]
    fn version_mismatch_names_both_sides() {
        let theirs = Versions { protocol: PROTOCOL_VERSION_FOR_TEST + 1, software: "9.9.9".into() };
        let err = theirs.check().unwrap_err().to_string();
        assert!(err.contains(&format!("protocol {}", PROTOCOL_VERSION_FOR_TEST)), "{err}");
        assert!(err.contains(&format!("protocol {}", PROTOCOL_VERSION_FOR_TEST + 1)), "{err}");
        assert!(err.contains("9.9.9") && err.contains(crate::SOFTWARE_VERSION), "{err}");
        assert!(Versions::current().check().is_ok());
    }

    const PROTOCOL_VERSION_FOR_TEST: u32 = crate::PROTOCOL_VERSION;
}
