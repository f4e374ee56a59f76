//! Reading a task's payload: every list is counted against the protocol's limits before
//! anything is allocated for it, then the payload is parsed in full. Shared by the task
//! router ([`crate::tasks`]) and the seed's tasks ([`crate::seed`]).

use std::marker::PhantomData;

use p2c2r_protocol::{ErrorCode, TaskError, limits};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};

/// Parses a payload; serde_json's recursion limit turns absurd nesting into an error.
pub(crate) fn parse<T: DeserializeOwned>(payload: &str) -> Result<T, TaskError> {
    serde_json::from_str(payload)
        .map_err(|e| TaskError::new(ErrorCode::InvalidPayload, format!("malformed task_data: {e}")))
}

const LIMIT_MARKER: &str = "p2c2r-limit:";

/// Counts a list without building it, failing once it is longer than `MAX`.
struct CountedSeq<const MAX: usize>;

impl<'de, const MAX: usize> Deserialize<'de> for CountedSeq<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count<const MAX: usize>(PhantomData<()>);
        impl<'de, const MAX: usize> Visitor<'de> for Count<MAX> {
            type Value = CountedSeq<MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut n = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                    if n > MAX {
                        return Err(serde::de::Error::custom(format!(
                            "{LIMIT_MARKER}a list holds more than {MAX} entries, the most allowed"
                        )));
                    }
                }
                Ok(CountedSeq)
            }
        }
        d.deserialize_seq(Count::<MAX>(PhantomData))
    }
}

type BodyList = Option<CountedSeq<{ limits::MAX_BODIES_PER_SESSION }>>;

#[derive(Deserialize)]
#[allow(dead_code)]
pub(crate) struct PhysicsProbe {
    add: BodyList,
    remove: BodyList,
    set_pose: BodyList,
    set_velocity: BodyList,
    forces: BodyList,
    impulses: BodyList,
    kinematic_targets: BodyList,
    wake: BodyList,
    sleep: BodyList,
    add_joints: Option<CountedSeq<{ limits::MAX_BODIES_PER_SESSION }>>,
    remove_joints: Option<CountedSeq<{ limits::MAX_BODIES_PER_SESSION }>>,
    touching: Option<CountedSeq<{ limits::MAX_TOUCHING_PAIRS }>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
pub(crate) struct AiProbe {
    agents: Option<CountedSeq<{ limits::MAX_AGENTS_PER_REQUEST }>>,
    grid: Option<GridProbe>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct GridProbe {
    rows: Option<CountedSeq<{ limits::MAX_GRID_CELLS }>>,
}

/// Rejects oversized lists before the full parse allocates them. Any other problem is
/// left for the full parse, which reports it precisely.
pub(crate) fn probe<T: DeserializeOwned>(payload: &str) -> Result<(), TaskError> {
    match serde_json::from_str::<T>(payload) {
        Err(e) if e.to_string().starts_with(LIMIT_MARKER) => {
            Err(TaskError::new(ErrorCode::LimitExceeded, e.to_string().trim_start_matches(LIMIT_MARKER).to_owned()))
        }
        _ => Ok(()),
    }
}
