//! The protocol's messages, one struct per `msg_type`, gathered in [`Message`].
//!
//! Field names follow the seed documents verbatim. Optional fields are P2C2R extensions
//! and are left out of the JSON when unset, so seed clients see the shapes they expect.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Payload, null_payload};

/// One protocol frame. Encode and decode with [`crate::codec`].
#[derive(Debug, Serialize)]
#[serde(tag = "msg_type", rename_all = "snake_case")]
pub enum Message {
    /// Peer → coordinator: join as a worker.
    RegisterPeer(RegisterPeer),
    /// Gamer → coordinator: join as a game client.
    RegisterGamer(RegisterGamer),
    /// Coordinator → peer or gamer: the registration succeeded.
    RegistrationAck(RegistrationAck),
    /// Peer or gamer → coordinator: I am alive.
    Heartbeat(Heartbeat),
    /// Gamer → coordinator: run this task.
    TaskRequest(TaskRequest),
    /// Coordinator → peer: run this task.
    TaskAssignment(TaskAssignment),
    /// Peer → coordinator (the answer to an assignment) and coordinator → gamer (the
    /// answer to a request).
    TaskResult(TaskResult),
    /// Either direction: something about an earlier message went wrong.
    Error(ErrorMessage),
    /// Anyone → coordinator: report your counters.
    Stats(StatsRequest),
    /// Coordinator → asker: the counters.
    StatsReport(StatsReport),
    /// Coordinator → gamer: how a session is replicated and verified, sent when that
    /// changes.
    SessionStatus(SessionStatus),
}

impl Message {
    /// The `msg_type` this message is tagged with.
    pub fn msg_type(&self) -> &'static str {
        match self {
            Message::RegisterPeer(_) => "register_peer",
            Message::RegisterGamer(_) => "register_gamer",
            Message::RegistrationAck(_) => "registration_ack",
            Message::Heartbeat(_) => "heartbeat",
            Message::TaskRequest(_) => "task_request",
            Message::TaskAssignment(_) => "task_assignment",
            Message::TaskResult(_) => "task_result",
            Message::Error(_) => "error",
            Message::Stats(_) => "stats",
            Message::StatsReport(_) => "stats_report",
            Message::SessionStatus(_) => "session_status",
        }
    }

    /// Builds an `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, refers_to: Option<String>) -> Self {
        Message::Error(ErrorMessage { code, message: message.into(), refers_to })
    }
}

/// What a peer offers. Every field is optional on the wire; the seed's clients send only
/// `cpu_cores` and `ram_gb`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Logical CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    /// Memory in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_gb: Option<f64>,
    /// Whether a GPU is present, or its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpu>,
    /// Task types the peer runs. Absent or empty: the peer accepts any type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_types: Option<Vec<String>>,
    /// How many tasks the peer runs at once. Absent: `cpu_cores`, or 1 without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_tasks: Option<u32>,
    /// What the peer's physics results depend on, bit for bit: results (and their
    /// digests) are comparable between peers that declare the same setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub determinism: Option<Determinism>,
    /// The peer takes large frames in chunks ([`crate::chunk`]), on a binary connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunked_frames: bool,
}

/// A peer's determinism setup. rapier3d with `enhanced-determinism` promises identical
/// results across platforms only for the same engine version and features; the
/// simulation code's own version and the CPU architecture are declared too, so that a
/// difference is never assumed away.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Determinism {
    /// The physics engine and its exact version, e.g. `rapier3d 0.36.1`.
    pub engine: String,
    /// The engine features that change results, e.g. `enhanced-determinism`.
    #[serde(default)]
    pub features: Vec<String>,
    /// The simulation code and its version, e.g. `p2c2r_sim 0.1.0`.
    pub sim: String,
    /// The CPU architecture, e.g. `x86_64`.
    pub arch: String,
}

impl Determinism {
    /// Whether every field is within the protocol's limits: strings non-empty and at
    /// most [`crate::limits::MAX_ID_BYTES`], at most
    /// [`crate::limits::MAX_DETERMINISM_FEATURES`] features.
    pub fn is_within_limits(&self) -> bool {
        let ok = |s: &String| !s.is_empty() && s.len() <= crate::limits::MAX_ID_BYTES;
        ok(&self.engine)
            && ok(&self.sim)
            && ok(&self.arch)
            && self.features.len() <= crate::limits::MAX_DETERMINISM_FEATURES
            && self.features.iter().all(ok)
    }

    /// The setup as one line, each field quoted and escaped (so two different setups
    /// never share a label), e.g. `"rapier3d 0.36.1" ["enhanced-determinism"] "p2c2r_sim
    /// 0.1.0" "x86_64"`: how an operator names the setups it accepts, and how peers log
    /// theirs.
    pub fn label(&self) -> String {
        format!("{:?} {:?} {:?} {:?}", self.engine, self.features, self.sim, self.arch)
    }
}

/// A GPU as declared by a peer: `false`/`true` (the seed's form) or a device name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gpu {
    /// Present or not.
    Flag(bool),
    /// Present, with this name.
    Name(String),
}

/// `register_peer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterPeer {
    /// The peer's id, unique among connected peers.
    pub peer_id: String,
    /// What the peer offers.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The `resume_secret` of an earlier registration of this id: proves this is the
    /// same client, so it may take the id over from a connection that is still open
    /// (see PROTOCOL.md, "Identity").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
}

/// `register_gamer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterGamer {
    /// The gamer's id, unique among connected gamers.
    pub gamer_id: String,
    /// The `resume_secret` of an earlier registration of this id: proves this is the
    /// same client, so it may take the id, its sessions and its pending results back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
}

/// `registration_ack`: carries the id that registered and `status: "registered"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationAck {
    /// Set when a peer registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Set when a gamer registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamer_id: Option<String>,
    /// Always `"registered"`.
    pub status: String,
    /// How often the coordinator pings; a client may heartbeat at this rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// The largest frame the coordinator accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// A secret that proves, in a later `register_*` of the same id, that it comes
    /// from this client. Keep it private; it changes with every registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
    /// The coordinator takes large frames in chunks on this connection, and sends its own
    /// large frames so ([`crate::chunk`]): a peer asked for it, on a binary connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunked_frames: bool,
}

/// `heartbeat`. Any inbound frame proves liveness; this one exists for clients that have
/// nothing else to say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sending peer, if a peer sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// The sending gamer, if a gamer sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamer_id: Option<String>,
}

/// `task_request`: a gamer asks for a task to be run.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The gamer's id for the task, unique among its pending tasks.
    pub task_id: String,
    /// What to run, e.g. `physics_step` (see [`crate::task_types`]).
    pub task_type: String,
    /// The task's input. The seed's test gamer calls this field `data`; both are accepted.
    #[serde(alias = "data", default = "null_payload")]
    pub task_data: Payload,
    /// Tasks with the same session id run on one peer, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Per-attempt deadline in milliseconds; the coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// `task_assignment`: the coordinator hands a task to a peer.
///
/// `task_data` holds the task as the gamer requested it ([`TaskSpec`]), as the seed
/// coordinator did, so the seed's `peer_node.py` finds `task_type` inside it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The assignment's id, issued by the coordinator and unique per attempt. The peer
    /// answers with this id in its `task_result`.
    pub task_id: String,
    /// 1 for the first dispatch, then one more for each re-dispatch.
    #[serde(default = "one")]
    pub attempt: u32,
    /// How long the coordinator waits for the answer before re-dispatching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The task itself.
    pub task_data: TaskSpec,
}

fn one() -> u32 {
    1
}

/// A `task_assignment` that borrows its fields and payload: the coordinator encodes
/// assignments from tasks it keeps for re-dispatch, without copying multi-megabyte
/// payloads into an owned [`TaskAssignment`] first. Encodes to the same bytes as
/// [`Message::TaskAssignment`] with the same contents.
#[derive(Debug, Serialize)]
#[serde(tag = "msg_type", rename = "task_assignment")]
pub struct TaskAssignmentRef<'a> {
    /// See [`TaskAssignment::task_id`].
    pub task_id: &'a str,
    /// See [`TaskAssignment::attempt`].
    pub attempt: u32,
    /// See [`TaskAssignment::deadline_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// See [`TaskAssignment::task_data`].
    pub task_data: TaskSpecRef<'a>,
}

/// The borrowed [`TaskSpec`] inside a [`TaskAssignmentRef`].
#[derive(Debug, Serialize)]
pub struct TaskSpecRef<'a> {
    /// See [`TaskSpec::task_id`].
    pub task_id: &'a str,
    /// See [`TaskSpec::task_type`].
    pub task_type: &'a str,
    /// See [`TaskSpec::session_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    /// See [`TaskSpec::gamer_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamer_id: Option<&'a str>,
    /// See [`TaskSpec::task_data`].
    pub task_data: &'a Payload,
}

/// The task inside a [`TaskAssignment`].
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The gamer's own task id.
    pub task_id: String,
    /// What to run.
    pub task_type: String,
    /// The session the task belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The gamer that submitted the task. Session ids are chosen by gamers, so a peer
    /// keys its sessions by gamer and session together ([`TaskSpec::session_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamer_id: Option<String>,
    /// The task's input, byte for byte as the gamer sent it.
    #[serde(default = "null_payload")]
    pub task_data: Payload,
}

impl TaskSpec {
    /// The key a peer stores this task's session under: the session id, scoped by the
    /// gamer when the coordinator names it, so two gamers' `"main"` sessions never share a
    /// world. `None` when the task has no session.
    pub fn session_key(&self) -> Option<String> {
        let session = self.session_id.as_deref()?;
        Some(match self.gamer_id.as_deref() {
            // Length-prefixed, so no choice of ids can make two pairs collide.
            Some(gamer) => format!("{}:{gamer}/{session}", gamer.len()),
            None => session.to_owned(),
        })
    }
}

/// `task_result`. From a peer, `task_id` is the assignment's id; towards a gamer, it is
/// the gamer's own task id.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskResult {
    /// Which task this answers.
    pub task_id: String,
    /// The answer. P2C2R results are objects with `"status": "success"` or
    /// `"status": "error"` (see [`crate::TaskError`]).
    #[serde(default = "null_payload")]
    pub result: Payload,
    /// The attempt that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Towards a gamer: the peer that ran the task (absent when the coordinator gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
}

/// `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// What went wrong, machine-readable.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The task id, `msg_type` or id the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<String>,
}

/// `stats`: asks the coordinator for its counters. Any connection may ask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRequest {}

/// `stats_report`: the coordinator's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Peers connected now.
    pub peers: u64,
    /// Gamers connected now.
    pub gamers: u64,
    /// Tasks waiting in queues now.
    pub queued_now: u64,
    /// Tasks assigned to peers and not yet answered, now.
    pub in_flight_now: u64,
    /// Tasks accepted from gamers since start.
    pub tasks_queued: u64,
    /// Dispatches to peers since start (first attempts and re-dispatches).
    pub tasks_assigned: u64,
    /// Results delivered to gamers since start.
    pub tasks_completed: u64,
    /// Dispatches that were repeated after a deadline or a lost peer.
    pub tasks_redispatched: u64,
    /// Tasks given up (attempts used up, queue wait passed, or quarantined as poison).
    pub tasks_failed: u64,
    /// Of those, tasks quarantined as poison: their peers kept disconnecting while
    /// running them.
    #[serde(default)]
    pub tasks_poisoned: u64,
    /// Payload bytes of the tasks held now (queued, in flight or orphaned).
    #[serde(default)]
    pub pending_bytes_now: u64,
    /// Tasks dropped because their gamer left.
    pub tasks_dropped: u64,
    /// Peers quarantined since start: for missing deadlines in a row, or outvoted by the
    /// replicas of a session.
    #[serde(default)]
    pub peers_quarantined: u64,
    /// Peers evicted for silence.
    pub peers_evicted: u64,
    /// `error` messages sent.
    pub errors_sent: u64,
    /// Ticks of replicated or audited sessions whose answers were compared (two or more
    /// replicas answered).
    #[serde(default)]
    pub ticks_compared: u64,
    /// Of those, ticks on which replicas' answers differed.
    #[serde(default)]
    pub replica_disagreements: u64,
    /// Peers proven to have returned a wrong result (outvoted by replicas with the same
    /// determinism setup) and quarantined.
    #[serde(default)]
    pub peers_caught_lying: u64,
    /// Full-state answers sent to gamers to correct a session a liar had served.
    #[serde(default)]
    pub sessions_corrected: u64,
    /// Replicas started from a session's log (new replicas, replacements, tie-breakers).
    #[serde(default)]
    pub replicas_started: u64,
    /// Disputes between replicas that nothing could settle (their peers are kept apart
    /// since, and the session's delivery held until replicas agree again).
    #[serde(default)]
    pub disputes_unsettled: u64,
    /// Peers quarantined for unsettled disputes with established peers of several
    /// networks.
    #[serde(default)]
    pub peers_quarantined_for_disputes: u64,
    /// Unreplicated physics sessions started (the sessions an audit may be drawn for).
    #[serde(default)]
    pub sessions_unreplicated_started: u64,
    /// Of those, sessions audited (drawn, and a second compatible peer was there).
    #[serde(default)]
    pub sessions_audited: u64,
}

/// `session_status`: how one of the gamer's sessions is replicated (see PROTOCOL.md,
/// "Replicated sessions"). Sent when it changes; informational.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The gamer's session.
    pub session_id: String,
    /// Replicas the coordinator wants for it (1: not replicated; 2 for an audited one).
    pub replicas_wanted: u8,
    /// Replicas in step with the session now (answering its ticks).
    pub replicas_live: u8,
    /// An audited session: a second replica's answers are compared but never delivered.
    #[serde(default)]
    pub audited: bool,
    /// Only answers that two replicas agree on are delivered.
    #[serde(default)]
    pub strict: bool,
    /// Ticks of this session on which replicas disagreed.
    #[serde(default)]
    pub disagreements: u64,
    /// Full-state answers sent to correct this session.
    #[serde(default)]
    pub corrections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_setups_never_share_a_label() {
        let setup = |sim: &str, arch: &str| Determinism {
            engine: "rapier3d 0.36.1".into(),
            features: vec!["enhanced-determinism".into()],
            sim: sim.into(),
            arch: arch.into(),
        };
        let honest = setup("p2c2r_sim 0.1.0", "x86_64");
        assert_eq!(honest.label(), r#""rapier3d 0.36.1" ["enhanced-determinism"] "p2c2r_sim 0.1.0" "x86_64""#);
        assert_ne!(honest.label(), setup("p2c2r_sim", "0.1.0 x86_64").label());
        assert_ne!(honest.label(), setup("p2c2r_sim 0.1.0\" \"x86_64", "").label());
    }
}
