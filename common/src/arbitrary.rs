//! Proptest strategies for the fields of messages that `any::<T>()` would make too large or
//! out of range, shared by the protocol tests of this crate and the master's (which enables the
//! `arbitrary` feature for its tests).

use std::collections::BTreeMap;

use chrono::DateTime;
use proptest::prelude::any;
use proptest::prop_assert_eq;
use proptest::test_runner::TestCaseError;
use proptest::strategy::Strategy;
use serde_bytes::ByteBuf;

use crate::codec::{decode, encode};
use crate::protocols::{Message, Timestamp};

/// Any microsecond between 1970 and 2100.
pub fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    (0i64..4_102_444_800_000_000).prop_map(|us| DateTime::from_timestamp_micros(us).expect("in range"))
}

/// Up to 2 KiB of any bytes.
pub fn arb_bytes() -> impl Strategy<Value = ByteBuf> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_map(ByteBuf::from)
}

/// Small collections keep generated messages (and the tests) small: nesting the default
/// sizes of up to 100 items three levels deep makes millions of values per case.
pub fn small_vec<T: proptest::arbitrary::Arbitrary>() -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<T>(), 0..4)
}

/// A map of up to three entries; see [`small_vec`].
pub fn small_map<K: proptest::arbitrary::Arbitrary + Ord, V: proptest::arbitrary::Arbitrary>()
-> impl Strategy<Value = BTreeMap<K, V>> {
    proptest::collection::btree_map(any::<K>(), any::<V>(), 0..4)
}

/// Checks that a message survives encode → decode → encode byte for byte (byte equality also
/// covers floats such as NaN that `==` cannot compare).
pub fn round_trips<M: Message>(msg: &M) -> Result<(), TestCaseError> {
    let frame = encode(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: M = decode(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again = encode(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(frame, again);
    Ok(())
}

/// Declares one proptest per message type, each checking that the type's messages survive
/// encoding ([`round_trips`]): `round_trip_tests!(name: Type, ...)`. Each runs on a thread of
/// [`PROPTEST_STACK`]: the derived strategies of the largest enums (the database calls) nest
/// deeper than a test thread's 2 MiB holds in a debug build.
#[macro_export]
macro_rules! round_trip_tests {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let run = || {
                    let mut runner = ::proptest::test_runner::TestRunner::new(::proptest::prelude::ProptestConfig::with_cases(64));
                    let found = runner.run(&::proptest::arbitrary::any::<$ty>(), |msg| $crate::arbitrary::round_trips(&msg));
                    if let Err(e) = found {
                        panic!("{e}");
                    }
                };
                let thread = ::std::thread::Builder::new().stack_size($crate::arbitrary::PROPTEST_STACK).spawn(run).expect("a test thread");
                if let Err(panic) = thread.join() {
                    ::std::panic::resume_unwind(panic);
                }
            }
        )*
    };
}

/// The stack of each [`round_trip_tests!`] test.
pub const PROPTEST_STACK: usize = 64 << 20;
