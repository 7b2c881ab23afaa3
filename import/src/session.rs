//! A conversation with the master's admin endpoint: connect, say hello with our versions and
//! who we are, then requests, each with a deadline, so that a master that is not running or
//! not answering gives a clear message instead of a hang.

use std::time::Duration;

use piwheels_common::keys::Role;
use piwheels_common::protocols::{AdminReply, AdminRequest, Versions, WireError};
use piwheels_common::transport::{self, Client, DEFAULT_MAX_MESSAGE, TransportError};

use crate::ToolError;
use crate::config::ConnectArgs;

/// A tool's session with the master.
pub struct Session {
    // Kept for as long as the client socket lives.
    _ctx: zmq::Context,
    client: Client<AdminRequest, AdminReply>,
    endpoint: String,
    timeout: Duration,
    /// The ABIs the farm builds for, as the master's welcome named them.
    abis: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("endpoint", &self.endpoint).field("timeout", &self.timeout).finish()
    }
}

impl Session {
    /// Connects to the master at `--import-queue` and says hello as `tool` run by this user on
    /// this host; fails with a reason when the master is not there, does not answer within
    /// `--connect-timeout`, or refuses us (another version).
    pub fn connect(args: &ConnectArgs, tool: &str) -> Result<Session, ToolError> {
        let endpoint = args.import_queue.clone();
        check_ipc_socket(&endpoint)?;
        let security = args.auth.security(&endpoint, Role::Importer).map_err(|e| ToolError::Failed(e.to_string()))?;
        let ctx = zmq::Context::new();
        let client = Client::connect_secured(&ctx, &endpoint, Some(DEFAULT_MAX_MESSAGE), &security)
            .map_err(|e| ToolError::Failed(format!("cannot connect to the master at {endpoint}: {e}")))?;
        let mut session = Session { _ctx: ctx, client, endpoint, timeout: args.timeout.0, abis: Vec::new() };
        let hello = AdminRequest::Hello { versions: Versions::current(), actor: actor(tool) };
        let answer = session.client.request(&hello, args.connect_timeout.0);
        if !matches!(answer, Ok(AdminReply::Welcome { .. })) {
            // Leave at once: a hello still queued for a master that is not there must not
            // hold the process for the socket's linger time.
            let _ = session.client.socket().set_linger(0);
        }
        match answer {
            Ok(AdminReply::Welcome { abis }) if abis.len() > AdminReply::MAX_ABIS => Err(ToolError::Failed(format!(
                "the master's welcome names {} ABIs, more than the {} a welcome may name",
                abis.len(),
                AdminReply::MAX_ABIS
            ))),
            Ok(AdminReply::Welcome { abis }) => {
                session.abis = abis;
                Ok(session)
            }
            Ok(AdminReply::Error(error)) => {
                let message = format!("the master refused us, saying: {}", error.message);
                Err(ToolError::from(WireError { message, ..error }))
            }
            Ok(other) => Err(ToolError::Failed(format!("unexpected answer from the master to our hello: {other:?}"))),
            Err(TransportError::Timeout { .. } | TransportError::Busy { .. }) => Err(ToolError::Failed(format!(
                "no answer from the master at {} within {:?}: is piw-master running, with this --import-queue?",
                session.endpoint, args.connect_timeout.0
            ))),
            Err(e) => Err(ToolError::Failed(format!("cannot talk to the master at {}: {e}", session.endpoint))),
        }
    }

    /// The ABIs the farm builds for, from the master's welcome.
    pub fn abis(&self) -> &[String] {
        &self.abis
    }

    /// Sends a request and waits up to `--timeout` for the answer.
    pub fn request(&self, request: &AdminRequest) -> Result<AdminReply, ToolError> {
        match self.client.request(request, self.timeout) {
            Ok(reply) => Ok(reply),
            Err(TransportError::Timeout { .. } | TransportError::Busy { .. }) => {
                let _ = self.client.socket().set_linger(0);
                Err(ToolError::Failed(format!(
                    "no answer from the master within {:?} (it may still be carrying the request out: see its log)",
                    self.timeout
                )))
            }
            Err(e) => Err(ToolError::Failed(format!("cannot talk to the master at {}: {e}", self.endpoint))),
        }
    }

    /// Sends a request whose answer is `Done` or `Error`: the sentence of `Done`, or a failure
    /// with the sentence of `Error`.
    pub fn done(&self, request: &AdminRequest) -> Result<String, ToolError> {
        match self.request(request)? {
            AdminReply::Done { message } => Ok(message),
            AdminReply::Error(error) => Err(error.into()),
            other => Err(ToolError::Failed(format!("unexpected answer from the master: {other:?}"))),
        }
    }
}

/// Fails at once, with the reason, when an ipc endpoint's socket file is missing or out of
/// reach, rather than waiting for an answer that cannot come.
fn check_ipc_socket(endpoint: &str) -> Result<(), ToolError> {
    let Some(path) = transport::ipc_path(endpoint) else { return Ok(()) };
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ToolError::Failed(format!(
            "no master is listening at {endpoint} ({} does not exist): is piw-master running, with this --import-queue?",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(ToolError::Failed(format!(
            "cannot reach the master at {endpoint}: permission denied (run the tool as the master's user)"
        ))),
        Err(e) => Err(ToolError::Failed(format!("cannot reach the master at {endpoint}: {e}"))),
    }
}

/// Who runs the tool, for the master's audit log: `user@host tool`.
pub fn actor(tool: &str) -> String {
    let uid = nix::unistd::getuid();
    let user = match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}")),
    };
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into());
    let actor: String = format!("{user}@{host} {tool}").chars().filter(|c| !c.is_control()).collect();
    actor.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_common::config::HumanDuration;
    use piwheels_common::keys::ClientAuthArgs;

    fn args(endpoint: &str) -> ConnectArgs {
        ConnectArgs {
            import_queue: endpoint.into(),
            file_queue: "tcp://localhost:5556".into(),
            connect_timeout: HumanDuration(Duration::from_millis(300)),
            timeout: HumanDuration(Duration::from_secs(1)),
            pypi_json: None,
            // Silence is what these tests are about; tools/ tests the keys.
            auth: ClientAuthArgs { no_auth: true, ..Default::default() },
        }
    }

    #[test]
    fn a_missing_socket_file_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("ipc://{}/import", dir.path().display());
        // Said from the file system, not after the connect timeout.
        let error = Session::connect(&args(&endpoint), "test").unwrap_err();
        assert!(error.to_string().contains("does not exist") && error.to_string().contains("piw-master running"), "{error}");
    }

    #[test]
    fn a_silent_endpoint_is_reported_after_the_connect_timeout() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = Session::connect(&args(&format!("tcp://127.0.0.1:{port}")), "test").unwrap_err();
        assert!(matches!(error, ToolError::Failed(_)));
        assert!(error.to_string().contains("no answer from the master"), "{error}");
    }

    #[test]
    fn the_actor_names_user_host_and_tool() {
        let actor = actor("piw-add");
        assert!(actor.contains('@') && actor.ends_with(" piw-add"), "{actor}");
    }
}
