//! The calls between the master's own tasks, each request with the type of its reply.
//!
//! A protocol with replies is declared with `calls!`: one struct per call, the request enum
//! that carries any of them on the socket, and the reply enum whose variants are named after
//! the call they answer, plus `Error`. So the server's `match` over requests must build each
//! call's own reply variant, a caller of a call gets that call's reply type
//! ([`Caller::call`]), and a reply meant for another call is an error, never a lucky decode.
//! One-way messages (PUSH → PULL) are plain enums.
//!
//! These protocols are the master's business: they never leave the process, so they are not
//! bound by the external protocol version in `piwheels_common::protocols`.
//!
//! | socket | transport | requests | replies |
//! |---|---|---|---|
//! | database (oracles) | inproc REQ → ROUTER (load balancer) | [`db::DbRequest`] | [`db::DbReply`] |
//! | file-system requests | inproc REQ → ROUTER | [`files::FsRequest`] | [`files::FsReply`] |
//! | slave driver commands | inproc REQ → ROUTER | [`tasks::SlaveCommand`] | [`tasks::SlaveCommandReply`] |
//! | release notices | inproc REQ → ROUTER | [`tasks::ReleaseNotice`] | [`tasks::ReleaseAck`] |
//! | page rewrites | inproc REQ → ROUTER | [`tasks::WebRequest`] | [`tasks::WebReply`] |
//! | build queue | inproc PUSH → PULL | [`tasks::BuildQueueUpdate`] | — |
//! | architect trigger | inproc PUSH → PULL | [`tasks::ArchitectTrigger`] | — |
//! | stats | inproc PUSH → PULL | [`tasks::StatsUpdate`] | — |

use std::time::Duration;

use piwheels_common::protocols::{ErrorKind, Message, WireError};
use piwheels_common::transport::{Client, TransportError};

pub mod db;
pub mod files;
pub mod tasks;

/// A request that gets one reply of a known type.
pub trait Call: Into<Self::Request> {
    /// The enum that carries every call of the protocol on the socket.
    type Request: Message;
    /// The protocol's reply enum.
    type Replies: Message;
    /// What this call gives back.
    type Reply: std::fmt::Debug;
    /// The call's name, for errors and logs.
    const NAME: &'static str;

    /// This call's reply out of the protocol's reply: `Err` gives back a reply to another call.
    fn reply(replies: Self::Replies) -> Result<Result<Self::Reply, WireError>, Self::Replies>;
}

/// A call that did not give its reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer came (the callee is busy or gone, or the transport failed).
    #[error("{call} failed: {source}")]
    Transport {
        /// The call's name.
        call: &'static str,
        /// What went wrong.
        source: TransportError,
    },
    /// The callee answered with an error.
    #[error("{call} failed: {error}")]
    Answered {
        /// The call's name.
        call: &'static str,
        /// The callee's error.
        error: WireError,
    },
    /// The callee answered another call (a bug in the callee).
    #[error("{call} got the reply to {answered}")]
    Mismatched {
        /// The call's name.
        call: &'static str,
        /// The call the reply belongs to.
        answered: &'static str,
    },
}

impl CallError {
    /// The callee's error, when it answered with one.
    pub fn answered(&self) -> Option<&WireError> {
        match self {
            CallError::Answered { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whose fault it is: the callee's verdict when it gave one, else the master's own.
    pub fn kind(&self) -> ErrorKind {
        self.answered().map_or(ErrorKind::Unavailable, |error| error.kind)
    }
}

/// A failed call passed on to a peer: its kind kept, its message naming the call.
impl From<CallError> for WireError {
    fn from(error: CallError) -> WireError {
        WireError { kind: error.kind(), message: error.to_string() }
    }
}

/// Names the call a reply answers, for [`CallError::Mismatched`].
pub trait ReplyName {
    /// The name of the call this reply answers (`Error` for an error).
    fn call_name(&self) -> &'static str;
}

/// A client of a protocol declared with `calls!`: every call waits at most `timeout`.
pub struct Caller<Req, Rep> {
    client: Client<Req, Rep>,
    timeout: Duration,
}

impl<Req: Message, Rep: Message + ReplyName> Caller<Req, Rep> {
    /// A caller of the server bound at `endpoint` in the process `ctx` belongs to.
    pub fn connect(ctx: &zmq::Context, endpoint: &str, timeout: Duration) -> Result<Self, TransportError> {
        Ok(Caller { client: Client::connect(ctx, endpoint, None)?, timeout })
    }

    /// Makes the call and gives its reply.
    pub fn call<C: Call<Request = Req, Replies = Rep>>(&self, call: C) -> Result<C::Reply, CallError> {
        let replies =
            self.client.request(&call.into(), self.timeout).map_err(|source| CallError::Transport { call: C::NAME, source })?;
        match C::reply(replies) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(CallError::Answered { call: C::NAME, error }),
            Err(other) => Err(CallError::Mismatched { call: C::NAME, answered: other.call_name() }),
        }
    }
}

impl<Req, Rep> std::fmt::Debug for Caller<Req, Rep> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("client", &self.client).field("timeout", &self.timeout).finish()
    }
}

/// Declares a protocol of calls: `requests Name; replies Name;` then, for each call, its
/// documentation, its name, its fields in braces and `-> ReplyType;`. Generates the call
/// structs, both enums, their [`Message`] names and each call's [`Call`] implementation.
macro_rules! calls {
    (
        $(#[$request_meta:meta])* requests $request:ident;
        $(#[$replies_meta:meta])* replies $replies:ident;
        $(
            $(#[$meta:meta])*
            $call:ident { $($(#[$field_meta:meta])* $field:ident: $field_ty:ty),* $(,)? }
                -> $(#[$reply_meta:meta])* $reply:ty;
        )*
    ) => {
        $(
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
            #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
            pub struct $call { $($(#[$field_meta])* pub $field: $field_ty,)* }

            impl From<$call> for $request {
                fn from(call: $call) -> $request {
                    $request::$call(call)
                }
            }

            impl $crate::calls::Call for $call {
                type Request = $request;
                type Replies = $replies;
                type Reply = $reply;
                const NAME: &'static str = stringify!($call);

                fn reply(replies: $replies) -> Result<Result<$reply, WireError>, $replies> {
                    match replies {
                        $replies::$call(reply) => Ok(Ok(reply)),
                        $replies::Error(error) => Ok(Err(error)),
                        #[allow(unreachable_patterns)]
                        other => Err(other),
                    }
                }
            }
        )*

        $(#[$request_meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $request {
            $(#[allow(missing_docs)] $call($call),)*
        }

        impl $request {
            /// The call's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $($request::$call(_) => stringify!($call),)*
                }
            }
        }

        $(#[$replies_meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $replies {
            $(#[allow(missing_docs)] $call($(#[$reply_meta])* $reply),)*
            /// The call was not carried out.
            Error(WireError),
        }

        impl $crate::calls::ReplyName for $replies {
            fn call_name(&self) -> &'static str {
                match self {
                    $($replies::$call(_) => stringify!($call),)*
                    $replies::Error(_) => "Error",
                }
            }
        }

        impl piwheels_common::protocols::Message for $request {
            const NAME: &'static str = stringify!($request);
        }

        impl piwheels_common::protocols::Message for $replies {
            const NAME: &'static str = stringify!($replies);
        }
    };
}
pub(crate) use calls;

#[cfg(test)]
mod tests {

    use super::db::{AllPackages, DbReply, PackageExists};
    use super::files::{FsReply, FsRequest};
    use super::tasks::*;
    use super::*;

    piwheels_common::round_trip_tests!(
        db_request: db::DbRequest,
        db_reply: DbReply,
        fs_request: FsRequest,
        fs_reply: FsReply,
        slave_command: SlaveCommand,
        slave_command_reply: SlaveCommandReply,
        build_queue_update: BuildQueueUpdate,
        architect_trigger: ArchitectTrigger,
        release_notice: ReleaseNotice,
        delete_ack: ReleaseAck,
        stats_update: StatsUpdate,
        web_request: WebRequest,
        web_reply: WebReply,
    );

    #[test]
    fn a_call_takes_only_its_own_reply_or_an_error() {
        assert_eq!(PackageExists::reply(DbReply::PackageExists(true)), Ok(Ok(true)));
        let refused = WireError::refused("no");
        assert_eq!(PackageExists::reply(DbReply::Error(refused.clone())), Ok(Err(refused)));
        // Another call's reply of the same type is not this call's answer.
        let other = PackageExists::reply(DbReply::VersionExists(true)).expect_err("another call's reply");
        assert_eq!(other.call_name(), "VersionExists");
        assert!(AllPackages::reply(DbReply::AllPackages(vec!["numpy".into()])).is_ok());
    }

    #[test]
    fn a_callers_errors_name_the_call_and_keep_the_kind() {
        let ctx = zmq::Context::new();
        let endpoint = "inproc://calls-test";
        let server = piwheels_common::transport::Server::<db::DbRequest, DbReply>::bind(&ctx, endpoint, None).unwrap();
        let caller = Caller::<db::DbRequest, DbReply>::connect(&ctx, endpoint, Duration::from_secs(5)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                for reply in [DbReply::Error(WireError::unavailable("database down")), DbReply::AllPackages(Vec::new())] {
                    let (peer, request) = server.recv().unwrap();
                    assert_eq!(request.unwrap().name(), "PackageExists");
                    server.send(&peer, &reply).unwrap();
                }
            });
            let error = caller.call(PackageExists { package: "numpy".into() }).unwrap_err();
            assert_eq!(error.answered().map(|e| e.kind), Some(ErrorKind::Unavailable));
            assert_eq!(error.to_string(), "PackageExists failed: database down");
            let error = caller.call(PackageExists { package: "numpy".into() }).unwrap_err();
            assert_eq!(error.to_string(), "PackageExists got the reply to AllPackages");
        });
    }
}
