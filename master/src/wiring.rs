//! The master's wiring, in one place: every inproc endpoint with the protocol it carries, the
//! task that binds it and the tasks that connect to it. Tasks open their inproc sockets only
//! through these [`Endpoint`]s: an endpoint knows its protocol, so a client of one protocol
//! cannot connect to another's endpoint (it does not compile), and a task that opens a
//! connection [`WIRING`] does not declare fails at once, naming it. The tasks' start order is
//! derived from the table ([`start_order`]): a task starts after every task it calls, so the
//! calls, the only waits between tasks, can never wait in a circle.

use std::marker::PhantomData;
use std::time::Duration;

use piwheels_common::protocols::{Message, StatusEvent};
use piwheels_common::transport::{Client, Dealer, Receiver, Sender, Server, Worker};

use crate::calls::db::{DbReply, DbRequest};
use crate::calls::files::{FsReply, FsRequest};
use crate::calls::tasks::{
    ArchitectTrigger, BuildQueueUpdate, ReleaseAck, ReleaseNotice, SlaveCommand, SlaveCommandReply, StatsUpdate, WebReply,
    WebRequest,
};
use crate::calls::{Caller, ReplyName};

/// The master's tasks, and its main loop, as the wiring names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskName {
    /// The master's main loop (control and status sockets).
    Main,
    /// The database load balancer.
    Seraph,
    /// The database workers (`--oracles` of them).
    Oracle,
    /// The index writer.
    Scribe,
    /// The build queue.
    Architect,
    /// The PyPI follower.
    CloudGazer,
    /// The pinner of releases' sources.
    SourcePinner,
    /// The failure triage.
    Triage,
    /// File reception.
    FileJuggler,
    /// Stats, home page and search index.
    BigBrother,
    /// The admin endpoint.
    MrChase,
    /// The access-log ingester.
    Lumberjack,
    /// The slaves' coordinator.
    SlaveDriver,
}

/// Every task, in the order [`start_order`] falls back on where the calls leave a choice: the
/// index writer early (many tasks ask it for pages), the slave driver as late as its callers
/// allow (everything it hands work to is running when the first slave arrives).
const TASKS: [TaskName; 12] = [
    TaskName::Seraph,
    TaskName::Oracle,
    TaskName::Scribe,
    TaskName::Architect,
    TaskName::CloudGazer,
    TaskName::SourcePinner,
    TaskName::Triage,
    TaskName::FileJuggler,
    TaskName::BigBrother,
    TaskName::MrChase,
    TaskName::Lumberjack,
    TaskName::SlaveDriver,
];

/// How the tasks connected to an endpoint use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Requests with replies (REQ → ROUTER): a caller waits, within its deadline, for the task
    /// that binds the endpoint.
    Calls,
    /// One-way messages (PUSH → PULL): nobody waits.
    Messages,
    /// Workers take the binder's requests (the oracles behind Seraph).
    Work,
}

/// One endpoint's line of the table.
#[derive(Debug)]
pub struct Wire {
    /// The inproc address (its protocol is its [`Endpoint`]'s type).
    pub address: &'static str,
    /// How it is used.
    pub used: Use,
    /// The task that binds it.
    pub bound_by: TaskName,
    /// The tasks that connect to it.
    pub connected_by: &'static [TaskName],
}

use TaskName::*;

/// The wiring table. `docs/architecture.md` shows it as prose; this is the one the code obeys.
pub const WIRING: &[Wire] = &[
    Wire {
        address: DB.address,
        used: Use::Calls,
        bound_by: Seraph,
        connected_by: &[Scribe, Architect, CloudGazer, SourcePinner, Triage, BigBrother, MrChase, Lumberjack, SlaveDriver],
    },
    Wire { address: ORACLES.address, used: Use::Work, bound_by: Seraph, connected_by: &[Oracle] },
    Wire {
        address: WEB.address,
        used: Use::Calls,
        bound_by: Scribe,
        connected_by: &[CloudGazer, SourcePinner, Triage, BigBrother, MrChase, SlaveDriver],
    },
    Wire { address: FS.address, used: Use::Calls, bound_by: FileJuggler, connected_by: &[MrChase, SlaveDriver] },
    Wire { address: RELEASE_NOTICES.address, used: Use::Calls, bound_by: SlaveDriver, connected_by: &[CloudGazer, MrChase] },
    Wire { address: SLAVE_COMMANDS.address, used: Use::Calls, bound_by: SlaveDriver, connected_by: &[Main] },
    Wire { address: BUILDS.address, used: Use::Messages, bound_by: SlaveDriver, connected_by: &[Architect] },
    Wire {
        address: ARCHITECT.address,
        used: Use::Messages,
        bound_by: Architect,
        connected_by: &[CloudGazer, SourcePinner, MrChase, SlaveDriver],
    },
    Wire {
        address: STATS.address,
        used: Use::Messages,
        bound_by: BigBrother,
        connected_by: &[MrChase, Lumberjack, SlaveDriver],
    },
    Wire {
        address: STATUS.address,
        used: Use::Messages,
        bound_by: Main,
        connected_by: &TASKS,
    },
];

/// An inproc endpoint that carries protocol `M` (its request or message type).
pub struct Endpoint<M> {
    address: &'static str,
    _m: PhantomData<fn() -> M>,
}

impl<M> Endpoint<M> {
    const fn new(address: &'static str) -> Endpoint<M> {
        Endpoint { address, _m: PhantomData }
    }

    /// The inproc address.
    pub fn address(&self) -> &'static str {
        self.address
    }

    /// The address `task` binds (for a socket the transport's wrappers do not make, such as
    /// the load balancer's raw ROUTERs), once the table says it may.
    pub fn bind_address(&self, task: TaskName) -> anyhow::Result<&'static str> {
        self.check(task, true)?;
        Ok(self.address)
    }

    /// Checks that the table has `task` on this end of the endpoint.
    fn check(&self, task: TaskName, binds: bool) -> anyhow::Result<()> {
        let wired = WIRING.iter().any(|wire| {
            wire.address == self.address && if binds { wire.bound_by == task } else { wire.connected_by.contains(&task) }
        });
        let verb = if binds { "bind" } else { "connect to" };
        anyhow::ensure!(wired, "{task:?} may not {verb} {}: master/src/wiring.rs does not declare it", self.address);
        Ok(())
    }
}

impl<M> std::fmt::Debug for Endpoint<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.address)
    }
}

/// A request protocol and the reply protocol that answers it.
pub trait Protocol: Message {
    /// The replies.
    type Reply: Message;
}

impl Protocol for DbRequest {
    type Reply = DbReply;
}
impl Protocol for FsRequest {
    type Reply = FsReply;
}
impl Protocol for WebRequest {
    type Reply = WebReply;
}
impl Protocol for ReleaseNotice {
    type Reply = ReleaseAck;
}
impl Protocol for SlaveCommand {
    type Reply = SlaveCommandReply;
}

impl<Req: Protocol> Endpoint<Req> {
    /// The server `task` binds.
    pub fn serve(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Server<Req, Req::Reply>> {
        self.check(task, true)?;
        Ok(Server::bind(ctx, self.address, None)?)
    }

    /// A client for `task`.
    pub fn client(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Client<Req, Req::Reply>> {
        self.check(task, false)?;
        Ok(Client::connect(ctx, self.address, None)?)
    }

    /// A dealer for `task`, whose tagged requests are answered as events instead of awaited
    /// (see `Dealer::send_tagged`).
    pub fn dealer(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Dealer<Req, Req::Reply>> {
        self.check(task, false)?;
        Ok(Dealer::connect(ctx, self.address, None)?)
    }
}

impl<Req: Protocol> Endpoint<Req>
where
    Req::Reply: ReplyName,
{
    /// A caller of typed calls for `task`, each waiting at most `timeout`.
    pub fn caller(&self, ctx: &zmq::Context, task: TaskName, timeout: Duration) -> anyhow::Result<Caller<Req, Req::Reply>> {
        self.check(task, false)?;
        Ok(Caller::connect(ctx, self.address, timeout)?)
    }
}

impl<M: Message> Endpoint<M> {
    /// The receiving end `task` binds.
    pub fn pull(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Receiver<M>> {
        self.check(task, true)?;
        Ok(Receiver::pull(ctx, self.address, None)?)
    }

    /// A sending end for `task`.
    pub fn push(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Sender<M>> {
        self.check(task, false)?;
        Ok(Sender::push(ctx, self.address)?)
    }
}

impl Endpoint<DbRequest> {
    /// An oracle's end of the balancer's back.
    pub fn work(&self, ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Worker<DbRequest, DbReply>> {
        self.check(task, false)?;
        Ok(Worker::connect(ctx, self.address)?)
    }
}

/// Database calls: Seraph's front.
pub const DB: Endpoint<DbRequest> = Endpoint::new("inproc://db");
/// Seraph's back, where the oracles take the database calls.
pub const ORACLES: Endpoint<DbRequest> = Endpoint::new("inproc://oracle");
/// Page rewrites: the index writer.
pub const WEB: Endpoint<WebRequest> = Endpoint::new("inproc://web");
/// File-system requests: the file juggler.
pub const FS: Endpoint<FsRequest> = Endpoint::new("inproc://fs");
/// Deletions the slave driver applies to its queues and builds.
pub const RELEASE_NOTICES: Endpoint<ReleaseNotice> = Endpoint::new("inproc://release-notices");
/// Operators' slave commands, from the main loop to the slave driver.
pub const SLAVE_COMMANDS: Endpoint<SlaveCommand> = Endpoint::new("inproc://slave-commands");
/// The architect's build queues, to the slave driver.
pub const BUILDS: Endpoint<BuildQueueUpdate> = Endpoint::new("inproc://builds");
/// Triggers of the architect.
pub const ARCHITECT: Endpoint<ArchitectTrigger> = Endpoint::new("inproc://architect");
/// Figures for the stats task.
pub const STATS: Endpoint<StatsUpdate> = Endpoint::new("inproc://stats");
/// Status events, from every task to the main loop (which relays them to monitors).
pub const STATUS: Endpoint<StatusEvent> = Endpoint::new("inproc://status");

/// Tasks that call one another in a circle: a start order cannot exist.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the tasks {0:?} call one another in a circle")]
pub struct Circle(pub Vec<TaskName>);

/// The order the tasks start in: each after every task it calls (so its calls find their
/// callee running, and at shutdown, in reverse, the callee outlives its callers); where that
/// leaves a choice, in the order of the tasks' list. An error names the tasks whose calls form a circle.
pub fn start_order(wiring: &[Wire]) -> Result<Vec<TaskName>, Circle> {
    let calls = |caller: TaskName, callee: TaskName| {
        wiring.iter().any(|wire| wire.used == Use::Calls && wire.bound_by == callee && wire.connected_by.contains(&caller))
    };
    let mut started: Vec<TaskName> = Vec::with_capacity(TASKS.len());
    let mut waiting: Vec<TaskName> = TASKS.to_vec();
    while !waiting.is_empty() {
        let ready = waiting.iter().position(|&task| waiting.iter().all(|&other| other == task || !calls(task, other)));
        match ready {
            Some(index) => started.push(waiting.remove(index)),
            None => return Err(Circle(waiting)),
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The tasks `task` waits on with calls.
    fn callees(wiring: &[Wire], task: TaskName) -> BTreeSet<TaskName> {
        wiring.iter().filter(|wire| wire.used == Use::Calls && wire.connected_by.contains(&task)).map(|wire| wire.bound_by).collect()
    }

    #[test]
    fn the_blocking_calls_between_tasks_form_no_circle_and_every_callee_starts_first() {
        let order = start_order(WIRING).expect("no circle");
        assert_eq!(order.len(), TASKS.len());
        for (position, task) in order.iter().enumerate() {
            for callee in callees(WIRING, *task) {
                if callee != Main {
                    let at = order.iter().position(|t| *t == callee).expect("every callee is a task");
                    assert!(at < position, "{task:?} calls {callee:?}, which starts after it: {order:?}");
                }
            }
        }
    }

    #[test]
    fn a_circle_of_calls_is_found_and_named() {
        const CIRCLE: &[Wire] = &[
            Wire { address: "inproc://a", used: Use::Calls, bound_by: Scribe, connected_by: &[SlaveDriver] },
            Wire { address: "inproc://b", used: Use::Calls, bound_by: FileJuggler, connected_by: &[Scribe] },
            Wire { address: "inproc://c", used: Use::Calls, bound_by: SlaveDriver, connected_by: &[FileJuggler] },
            // Messages in a circle are fine: nobody waits.
            Wire { address: "inproc://d", used: Use::Messages, bound_by: Seraph, connected_by: &[Oracle] },
            Wire { address: "inproc://e", used: Use::Messages, bound_by: Oracle, connected_by: &[Seraph] },
        ];
        assert_eq!(start_order(CIRCLE), Err(Circle(vec![Scribe, FileJuggler, SlaveDriver])));
    }

    #[test]
    fn every_endpoint_is_in_the_table_once_and_a_task_outside_it_is_refused() {
        let addresses: BTreeSet<&str> = WIRING.iter().map(|wire| wire.address).collect();
        assert_eq!(addresses.len(), WIRING.len(), "an address is declared twice");
        let ctx = zmq::Context::new();
        let error = FS.client(&ctx, Lumberjack).expect_err("the log ingester has no business with files");
        assert_eq!(error.to_string(), "Lumberjack may not connect to inproc://fs: master/src/wiring.rs does not declare it");
        let error = WEB.serve(&ctx, SlaveDriver).expect_err("only the index writer serves pages");
        assert!(error.to_string().contains("SlaveDriver may not bind inproc://web"), "{error}");
    }
}
