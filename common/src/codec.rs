//! Puts [`Message`]s on the wire and takes them off again.
//!
//! A frame is a MessagePack array of two items: the protocol's name (a string) and the message
//! itself as rmp-serde writes it (structs as arrays, enums by variant name). Decoding checks the
//! name, decodes the message and insists that nothing follows it, so truncated frames, garbage,
//! trailing bytes and frames of another protocol are all [`ProtocolError`]s, never panics.
//!
//! File chunks, the one large message, have two shortcuts that write and read exactly the
//! frames [`encode`] and [`decode`] do, without copying the chunk's bytes:
//! [`encode_chunk`] lets the sender read the file straight into the frame, and
//! [`decode_file_request`] lends the receiver the bytes inside the frame.

use std::borrow::Cow;
use std::io::Cursor;
use std::marker::PhantomData;

use serde_bytes::ByteBuf;

use crate::protocols::{FileRequest, Message, TransferId, Versions};

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

/// A frame already encoded as a message of protocol `M`, for [`crate::transport::Dealer::send_encoded`].
pub struct Encoded<M> {
    frame: Vec<u8>,
    _m: PhantomData<fn(M)>,
}

impl<M> Encoded<M> {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// The frame, whose allocation is exactly its length (so a ZeroMQ message can take it over
    /// without a copy).
    pub fn into_vec(self) -> Vec<u8> {
        self.frame
    }
}

impl<M> std::fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.frame.len())
    }
}

/// A [`FileRequest::Chunk`] frame whose data the caller writes in place: once
/// [`ChunkFrame::data_mut`] holds the bytes, [`ChunkFrame::into_encoded`] is byte for byte what
/// [`encode`] makes of `FileRequest::Chunk { offset, data }`, in one allocation and without
/// copying the data again.
pub struct ChunkFrame {
    frame: Vec<u8>,
    data_start: usize,
}

impl ChunkFrame {
    /// Where the chunk's bytes go (zeroed until written).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.frame[self.data_start..]
    }

    /// The finished frame.
    pub fn into_encoded(self) -> Encoded<FileRequest> {
        Encoded { frame: self.frame, _m: PhantomData }
    }
}

impl std::fmt::Debug for ChunkFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkFrame({} bytes of data)", self.frame.len() - self.data_start)
    }
}

/// Starts the frame of a [`FileRequest::Chunk`] of `len` bytes at `offset`; see [`ChunkFrame`].
pub fn encode_chunk(offset: u64, len: usize) -> Result<ChunkFrame, ProtocolError> {
    let fail = |reason: String| ProtocolError::Encode { protocol: FileRequest::NAME, reason };
    // The message as `encode` writes it with no data: the data is its last item, an empty bin
    // (`c4 00`). The frame is that with the bin's real header and the bytes after it.
    let empty = encode(&FileRequest::Chunk { offset, data: ByteBuf::new() })?;
    let head = empty.strip_suffix(&[0xc4, 0x00]).ok_or_else(|| fail("a chunk's data is not encoded last".into()))?;
    let bin_len = u32::try_from(len).map_err(|_| fail(format!("a chunk of {len} bytes is too large")))?;
    let mut bin = Vec::with_capacity(5);
    rmp::encode::write_bin_len(&mut bin, bin_len).map_err(|e| fail(e.to_string()))?;
    let total = head.len() + bin.len() + len;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(head);
    frame.extend_from_slice(&bin);
    frame.resize(total, 0);
    Ok(ChunkFrame { frame, data_start: total - len })
}

/// A [`FileRequest`] decoded by [`decode_file_request`]: the same message, but a chunk's bytes
/// are borrowed from the frame when the frame has the form [`encode`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRequestRef<'a> {
    /// [`FileRequest::Hello`].
    Hello {
        /// The uploader's versions.
        versions: Versions,
        /// The transfer.
        transfer: TransferId,
    },
    /// [`FileRequest::Chunk`].
    Chunk {
        /// Where the bytes start in the file.
        offset: u64,
        /// The bytes: borrowed from the frame, or (for a frame in another form that
        /// [`decode`] accepts) a copy.
        data: Cow<'a, [u8]>,
    },
}

impl FileRequestRef<'_> {
    /// The owned message.
    pub fn into_owned(self) -> FileRequest {
        match self {
            FileRequestRef::Hello { versions, transfer } => FileRequest::Hello { versions, transfer },
            FileRequestRef::Chunk { offset, data } => FileRequest::Chunk { offset, data: ByteBuf::from(data.into_owned()) },
        }
    }
}

/// Decodes a frame of protocol [`FileRequest`] as [`decode`] does (it accepts and refuses
/// exactly the same frames, with the same errors), lending a chunk's bytes from the frame
/// instead of copying them when the frame has the form [`encode`] writes.
pub fn decode_file_request(frame: &[u8]) -> Result<FileRequestRef<'_>, ProtocolError> {
    if let Some((offset, data)) = chunk_in_place(frame) {
        return Ok(FileRequestRef::Chunk { offset, data: Cow::Borrowed(data) });
    }
    Ok(match decode::<FileRequest>(frame)? {
        FileRequest::Hello { versions, transfer } => FileRequestRef::Hello { versions, transfer },
        FileRequest::Chunk { offset, data } => FileRequestRef::Chunk { offset, data: Cow::Owned(data.into_vec()) },
    })
}

/// The offset and bytes of a chunk frame in exactly the layout [`encode`] writes:
/// `[ "FileRequest", { "Chunk": [offset, bin] } ]` with nothing after the bin. None for
/// anything else, which [`decode`] then judges. Whatever this accepts, `decode` accepts too,
/// with the same offset and bytes (see the tests).
fn chunk_in_place(frame: &[u8]) -> Option<(u64, &[u8])> {
    let mut rest = frame;
    if rmp::decode::read_array_len(&mut rest).ok()? != 2 {
        return None;
    }
    let (name, mut rest) = rmp::decode::read_str_from_slice(rest).ok()?;
    if name != FileRequest::NAME || rmp::decode::read_map_len(&mut rest).ok()? != 1 {
        return None;
    }
    let (variant, mut rest) = rmp::decode::read_str_from_slice(rest).ok()?;
    if variant != "Chunk" || rmp::decode::read_array_len(&mut rest).ok()? != 2 {
        return None;
    }
    let offset: u64 = rmp::decode::read_int(&mut rest).ok()?;
    let len = rmp::decode::read_bin_len(&mut rest).ok()?;
    (usize::try_from(len).ok()? == rest.len()).then_some((offset, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::*;
    use proptest::prelude::*;

    crate::round_trip_tests!(
        task_control: TaskControl,
        control_request: ControlRequest,
        control_reply: ControlReply,
        status_event: StatusEvent,
        slave_request: SlaveRequest,
        slave_reply: SlaveReply,
        file_request: FileRequest,
        file_reply: FileReply,
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
            let _ = decode::<AdminRequest>(&bytes);
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

    #[test]
    fn another_software_version_of_the_same_protocol_is_accepted() {
        let theirs = Versions { protocol: PROTOCOL_VERSION_FOR_TEST, software: "0.0.1-older".into() };
        assert_eq!(theirs.check(), Ok(()));
        for software in ["x".repeat(MAX_SOFTWARE_VERSION + 1), "1.0\n2026-01-01 ERROR forged".into()] {
            let err = Versions { protocol: PROTOCOL_VERSION_FOR_TEST, software }.check().unwrap_err();
            assert_eq!(err.theirs.software, "unprintable", "{err}");
        }
    }

    const PROTOCOL_VERSION_FOR_TEST: u32 = crate::PROTOCOL_VERSION;

    /// `decode_file_request` must agree with `decode` on every frame: same message (or same
    /// error), and a chunk's bytes borrowed whenever the frame is one `encode` wrote.
    fn agrees_with_decode(frame: &[u8]) -> Result<(), TestCaseError> {
        let fast = decode_file_request(frame).map(FileRequestRef::into_owned);
        prop_assert_eq!(fast, decode::<FileRequest>(frame), "frame {:02x?}", frame);
        Ok(())
    }

    /// Lengths around the bin header's size classes, and a few others.
    fn chunk_len() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..300, Just(255), Just(256), Just(65_535), Just(65_536), Just(65_537), 0usize..300_000]
    }

    proptest! {
        #[test]
        fn chunks_are_decoded_in_place_exactly_as_decode_does(offset: u64, len in chunk_len(), seed: u8) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let frame = encode(&FileRequest::Chunk { offset, data: ByteBuf::from(data.clone()) }).unwrap();
            match decode_file_request(&frame).unwrap() {
                FileRequestRef::Chunk { offset: got, data: Cow::Borrowed(bytes) } => {
                    prop_assert_eq!(got, offset);
                    prop_assert_eq!(bytes, &data[..]);
                    // Borrowed from the frame itself: its last `len` bytes.
                    prop_assert!(std::ptr::eq(bytes, &frame[frame.len() - len..]));
                }
                other => prop_assert!(false, "not decoded in place: {:?}", other),
            }
            agrees_with_decode(&frame)?;
        }

        #[test]
        fn encode_chunk_writes_what_encode_writes(offset: u64, len in chunk_len(), seed: u8) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
            let mut built = encode_chunk(offset, len).unwrap();
            built.data_mut().copy_from_slice(&data);
            let built = built.into_encoded().into_vec();
            prop_assert_eq!(built.capacity(), built.len(), "the allocation is exactly the frame");
            prop_assert_eq!(built, encode(&FileRequest::Chunk { offset, data: ByteBuf::from(data) }).unwrap());
        }

        #[test]
        fn every_file_request_decodes_alike(msg: FileRequest) {
            let frame = encode(&msg).unwrap();
            prop_assert_eq!(decode_file_request(&frame).unwrap().into_owned(), msg);
            agrees_with_decode(&frame)?;
        }

        /// Truncated, extended and corrupted chunk frames, and garbage: refused exactly when
        /// `decode` refuses them.
        #[test]
        fn damaged_frames_are_judged_as_decode_judges_them(
            offset: u64,
            len in 0usize..600,
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte: u8,
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let frame = encode(&FileRequest::Chunk { offset, data: ByteBuf::from(vec![7u8; len]) }).unwrap();
            agrees_with_decode(&frame[..cut.index(frame.len())])?;
            let mut longer = frame.clone();
            longer.push(byte);
            agrees_with_decode(&longer)?;
            let mut changed = frame.clone();
            changed[flip.index(frame.len())] = byte;
            agrees_with_decode(&changed)?;
            let mut header_changed = frame.clone();
            let at = flip.index(frame.len() - len);
            header_changed[at] = byte;
            agrees_with_decode(&header_changed)?;
            agrees_with_decode(&garbage)?;
        }
    }

    /// Frames `encode` never writes but `decode` accepts go through `decode`: the same message,
    /// with the bytes copied.
    #[test]
    fn other_spellings_of_a_chunk_are_decoded_by_decode() {
        let envelope = |body: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = Vec::new();
            rmp::encode::write_array_len(&mut frame, 2).unwrap();
            rmp::encode::write_str(&mut frame, "FileRequest").unwrap();
            body(&mut frame);
            frame
        };
        // The data as an array of integers.
        let as_array = envelope(&|f| {
            rmp::encode::write_map_len(f, 1).unwrap();
            rmp::encode::write_str(f, "Chunk").unwrap();
            rmp::encode::write_array_len(f, 2).unwrap();
            rmp::encode::write_uint(f, 5).unwrap();
            rmp::encode::write_array_len(f, 2).unwrap();
            rmp::encode::write_uint(f, 1).unwrap();
            rmp::encode::write_uint(f, 2).unwrap();
        });
        // The offset in a wider integer than needed.
        let wide = envelope(&|f| {
            rmp::encode::write_map_len(f, 1).unwrap();
            rmp::encode::write_str(f, "Chunk").unwrap();
            rmp::encode::write_array_len(f, 2).unwrap();
            rmp::encode::write_u64(f, 5).unwrap();
            rmp::encode::write_bin(f, &[1, 2]).unwrap();
        });
        // Fields as a map.
        let as_map = envelope(&|f| {
            rmp::encode::write_map_len(f, 1).unwrap();
            rmp::encode::write_str(f, "Chunk").unwrap();
            rmp::encode::write_map_len(f, 2).unwrap();
            rmp::encode::write_str(f, "data").unwrap();
            rmp::encode::write_bin(f, &[1, 2]).unwrap();
            rmp::encode::write_str(f, "offset").unwrap();
            rmp::encode::write_uint(f, 5).unwrap();
        });
        let expected = FileRequest::Chunk { offset: 5, data: ByteBuf::from(vec![1, 2]) };
        for frame in [as_array, wide, as_map] {
            assert_eq!(decode::<FileRequest>(&frame), Ok(expected.clone()), "{frame:02x?}");
            assert_eq!(decode_file_request(&frame).map(FileRequestRef::into_owned), Ok(expected.clone()), "{frame:02x?}");
        }
        // A chunk of another protocol is refused alike.
        let mut other = Vec::new();
        rmp::encode::write_array_len(&mut other, 2).unwrap();
        rmp::encode::write_str(&mut other, "FileReply").unwrap();
        other.extend_from_slice(&encode(&expected).unwrap()[1 + 1 + "FileRequest".len()..]);
        assert!(matches!(decode_file_request(&other), Err(ProtocolError::WrongProtocol { .. })));
        assert_eq!(decode_file_request(&other).map(FileRequestRef::into_owned), decode::<FileRequest>(&other));
    }
}
