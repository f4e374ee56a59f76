//! An honest gamer for tests: the real [`GamerClient`] of `p2c2r_client`, with every wait
//! bounded and every failure a panic that says what went wrong.
//!
//! Tests that play a well-behaved gamer (well-formed requests, waiting for results) use
//! this instead of the raw [`Client`](crate::client::Client), so they exercise the client
//! games ship with. The raw client stays for what an honest client never does or never
//! shows: exact frames, errors by code, malformed or hostile input, registration details.
//!
//! [`connect`] turns reconnection off: a test must see a dropped connection as a failure
//! (an outcome lost, a `submit` refused), not have the client resume behind its back.
//! Use [`connect_with`] for a test that wants another configuration (a token, TLS,
//! reconnection).
//!
//! ```no_run
//! # async fn demo(url: &str) {
//! use p2c2r_testkit::gamer;
//! let mut g = gamer::connect(url, "g1").await;
//! let outcome = g.run("physics", None, p2c2r_protocol::raw_payload(r#"{"num_objects":3}"#.into()).unwrap()).await;
//! assert!(outcome.error().is_none());
//! # }
//! ```

use p2c2r_client::{ClientConfig, ClientEvent, ClientEvents, GamerClient, TaskOutcome, TaskReply};
use p2c2r_protocol::physics::{PhysicsStepRequest, PhysicsStepResult};
use p2c2r_protocol::{Payload, TaskError, TaskRequest, raw_payload, task_types, to_payload};

use crate::wait::{WAIT, within};

/// Connects and registers gamer `gamer_id` at `url` with the client's defaults, except
/// that it does not reconnect; panics if that fails or takes over [`WAIT`].
pub async fn connect(url: &str, gamer_id: &str) -> Gamer {
    connect_with(ClientConfig { reconnect: false, ..ClientConfig::new(url, gamer_id) }).await
}

/// Connects and registers with this configuration; panics if that fails or takes over
/// [`WAIT`].
pub async fn connect_with(config: ClientConfig) -> Gamer {
    let what = format!("gamer {} to register", config.gamer_id);
    let (client, events) = within(&what, GamerClient::connect(config))
        .await
        .unwrap_or_else(|e| panic!("{what}: the first connection failed: {e}"));
    Gamer { client, events, tasks: 0 }
}

/// A `task_request` for [`GamerClient::submit`] or [`Gamer::send`]; `data` is JSON text.
pub fn request(
    task_id: &str,
    task_type: &str,
    data: &str,
    session: Option<&str>,
    deadline_ms: Option<u64>,
) -> TaskRequest {
    TaskRequest {
        task_id: task_id.into(),
        task_type: task_type.into(),
        task_data: raw_payload(data.to_owned()).expect("a JSON payload"),
        session_id: session.map(str::to_owned),
        deadline_ms,
    }
}

/// The JSON of a successful outcome, byte for byte as the coordinator delivered it;
/// panics with the task error when it failed.
pub fn success_json(outcome: &TaskOutcome) -> &str {
    match &outcome.reply {
        TaskReply::Success(raw) => raw.json().unwrap(),
        TaskReply::Failed(e) => panic!("task {} failed: {e:?}", outcome.task_id),
    }
}

/// A connected [`GamerClient`] and its event stream (see the [module docs](self)).
pub struct Gamer {
    /// The client itself, for what the helpers below do not cover.
    pub client: GamerClient,
    /// Its events: outcomes of tasks sent with [`Gamer::send`], connection changes.
    pub events: ClientEvents,
    /// The last task number [`Gamer::run`] used.
    tasks: u64,
}

impl Gamer {
    /// Submits a task and waits for its outcome (`3 × WAIT` at most, as a task may queue);
    /// panics if the client reports an error instead (refused, disconnected).
    pub async fn submit(&self, request: TaskRequest) -> TaskOutcome {
        let task_id = request.task_id.clone();
        tokio::time::timeout(3 * WAIT, self.client.submit(request))
            .await
            .unwrap_or_else(|_| panic!("timed out after {:?} waiting for the outcome of {task_id}", 3 * WAIT))
            .unwrap_or_else(|e| panic!("task {task_id}: {e}"))
    }

    /// Submits a task (numbered `task-1`, `task-2`, …) and waits for its outcome.
    pub async fn run(&mut self, task_type: &str, session: Option<&str>, data: Payload) -> TaskOutcome {
        self.run_with_deadline(task_type, session, data, None).await
    }

    /// [`run`](Self::run) with a per-attempt deadline.
    pub async fn run_with_deadline(
        &mut self,
        task_type: &str,
        session: Option<&str>,
        data: Payload,
        deadline_ms: Option<u64>,
    ) -> TaskOutcome {
        self.tasks += 1;
        let request = TaskRequest {
            task_id: format!("task-{}", self.tasks),
            task_type: task_type.into(),
            task_data: data,
            session_id: session.map(str::to_owned),
            deadline_ms,
        };
        self.submit(request).await
    }

    /// Runs one physics step of `session`: the step's result, or the task error the peer
    /// (or the coordinator) answered with.
    pub async fn physics(
        &mut self,
        session: &str,
        request: &PhysicsStepRequest,
    ) -> Result<(PhysicsStepResult, TaskOutcome), TaskError> {
        let payload = to_payload(request).expect("a serialisable request");
        let outcome = self.run(task_types::PHYSICS_STEP, Some(session), payload).await;
        if let Some(e) = outcome.error() {
            return Err(e.clone());
        }
        let result = outcome.parse::<PhysicsStepResult>().unwrap_or_else(|e| panic!("not a physics result: {e:?}"));
        Ok((result, outcome))
    }

    /// Sends a task without waiting; its outcome comes from [`next_outcome`](Self::next_outcome).
    /// Panics if the client cannot take it (queue full, closed).
    pub fn send(&self, request: TaskRequest) {
        let task_id = request.task_id.clone();
        self.client.send(request).unwrap_or_else(|e| panic!("task {task_id} not sent: {e}"));
    }

    /// The next outcome on the event stream (tasks sent with [`send`](Self::send)),
    /// skipping connection notices and `session_status` reports; panics on an error, an undelivered task, a lost
    /// connection, or after `3 × WAIT`.
    pub async fn next_outcome(&mut self) -> TaskOutcome {
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out after {:?} waiting for a task outcome", 3 * WAIT))
                .expect("the client ended");
            match event {
                ClientEvent::Result(outcome) => return outcome,
                ClientEvent::Connected { .. } | ClientEvent::SessionStatus(_) => continue,
                other => panic!("expected a task outcome, got {other:?}"),
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.client.close().await;
    }
}
