//! Collision and contact-force events, computed so that they are deterministic and survive
//! a move of the session to another world.
//!
//! Rapier raises collision events from its narrow phase's transitions, in the order of its
//! internal graphs, and a world built from a snapshot knows none of the old world's
//! contacts: it would raise every touching pair as *started* again. So the world keeps
//! the set of touching pairs itself ([`Events::touching`]): after each step it reads which
//! pairs of the bodies that ask for collision events touch now (a contact pair with an
//! active contact, or an intersecting sensor pair), and reports the difference against
//! the set as `stopped` and `started` events. A snapshot carries the set the gamer holds
//! (the pairs started and not yet stopped in what it applied), so the new world reports a
//! pair that still touches neither started nor stopped, and one that no longer touches as
//! stopped, once. Removing a body reports its pairs stopped (`removed: true`).
//!
//! Contact-force events come from rapier's solver (the forces only it knows) through
//! [`ForceCollector`]. Every tick's events are sorted by step, then kind (stops, starts,
//! forces), then body ids; the world's digest covers the touching set and the tick's
//! events.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use p2c2r_protocol::physics::{BodyId, EventKind, PhysicsEvent, active_events};
use rapier3d::prelude::{
    ColliderHandle, ColliderSet, ContactForceEvent, ContactPair, EventHandler, NarrowPhase, RigidBodySet, SoftBodySet,
    SoftBodyTearEvent,
};

/// A body that asks for events: its collider and what it asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listener {
    pub collider: ColliderHandle,
    pub active_events: u8,
}

/// The events side of one world.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Pairs touching after the last step, smaller id first, with whether one of them is
    /// a sensor.
    touching: BTreeMap<(BodyId, BodyId), bool>,
    /// Bodies that ask for collision events, by id.
    colliding: BTreeMap<BodyId, ColliderHandle>,
    /// How many bodies ask for contact-force events.
    forcing: usize,
    /// This tick's events so far.
    tick: Vec<PhysicsEvent>,
}

impl Events {
    /// Starts a tick's events.
    pub fn begin_tick(&mut self) {
        self.tick.clear();
    }

    /// The tick's events, sorted ([`EventKind::rank`]).
    pub fn finish_tick(&mut self) -> Vec<PhysicsEvent> {
        self.tick.sort_by_key(|e| (e.step, e.kind.rank(), e.body1, e.body2));
        self.tick.clone()
    }

    /// How many events the tick holds so far.
    pub fn count(&self) -> usize {
        self.tick.len()
    }

    /// The touching pairs, sorted, with whether one of each is a sensor.
    pub fn touching(&self) -> impl Iterator<Item = ((BodyId, BodyId), bool)> + '_ {
        self.touching.iter().map(|(&pair, &sensor)| (pair, sensor))
    }

    /// The last tick's events (what [`Events::finish_tick`] returned).
    pub fn last_tick(&self) -> &[PhysicsEvent] {
        &self.tick
    }

    /// Whether any body asks for contact-force events (rapier's solver then reports them).
    pub fn wants_forces(&self) -> bool {
        self.forcing > 0
    }

    /// A body joined the world.
    pub fn add_body(&mut self, id: BodyId, listener: Listener) {
        if listener.active_events & active_events::COLLISION_EVENTS != 0 {
            self.colliding.insert(id, listener.collider);
        }
        if listener.active_events & active_events::CONTACT_FORCE_EVENTS != 0 {
            self.forcing += 1;
        }
    }

    /// A snapshot's touching pairs (validated: sorted, of bodies in the world, one of each
    /// asking for collision events).
    pub fn restore_touching(&mut self, pairs: impl Iterator<Item = ((BodyId, BodyId), bool)>) {
        self.touching = pairs.collect();
    }

    /// Bodies left the world during `step`: their pairs stop, as removed.
    pub fn remove_bodies(&mut self, removed: &[(BodyId, u8)], step: u32) {
        for &(id, active) in removed {
            if active & active_events::COLLISION_EVENTS != 0 {
                self.colliding.remove(&id);
            }
            if active & active_events::CONTACT_FORCE_EVENTS != 0 {
                self.forcing -= 1;
            }
        }
        if self.touching.is_empty() {
            return;
        }
        let gone: HashSet<BodyId> = removed.iter().map(|&(id, _)| id).collect();
        let tick = &mut self.tick;
        self.touching.retain(|&(body1, body2), &mut sensor| {
            let keep = !gone.contains(&body1) && !gone.contains(&body2);
            if !keep {
                tick.push(PhysicsEvent { step, body1, body2, kind: EventKind::Stopped { sensor, removed: true } });
            }
            keep
        });
    }

    /// After a step: reads which pairs of the listening bodies touch and reports the
    /// changes (a collider's user data is its body id).
    pub fn after_step(&mut self, narrow_phase: &NarrowPhase, colliders: &ColliderSet, step: u32) {
        if self.colliding.is_empty() && self.touching.is_empty() {
            return;
        }
        let body_of = |handle: ColliderHandle| colliders.get(handle).map(|c| c.user_data as BodyId);
        let mut now: BTreeMap<(BodyId, BodyId), bool> = BTreeMap::new();
        for (&id, &collider) in &self.colliding {
            for pair in narrow_phase.contact_pairs_with(collider) {
                if !pair.has_any_active_contact() {
                    continue;
                }
                let other = if pair.collider1 == collider { pair.collider2 } else { pair.collider1 };
                if let Some(other) = body_of(other) {
                    now.insert(ordered(id, other), false);
                }
            }
            for (c1, c2, intersecting) in narrow_phase.intersection_pairs_with(collider) {
                if !intersecting {
                    continue;
                }
                let other = if c1 == collider { c2 } else { c1 };
                if let Some(other) = body_of(other) {
                    now.insert(ordered(id, other), true);
                }
            }
        }
        for (&(body1, body2), &sensor) in &self.touching {
            if !now.contains_key(&(body1, body2)) {
                self.tick.push(PhysicsEvent {
                    step,
                    body1,
                    body2,
                    kind: EventKind::Stopped { sensor, removed: false },
                });
            }
        }
        for (&(body1, body2), &sensor) in &now {
            if !self.touching.contains_key(&(body1, body2)) {
                self.tick.push(PhysicsEvent { step, body1, body2, kind: EventKind::Started { sensor } });
            }
        }
        self.touching = now;
    }

    /// Adds the contact-force events rapier's solver reported during `step`.
    pub fn add_forces(&mut self, collector: &ForceCollector, colliders: &ColliderSet, step: u32) {
        let reported = std::mem::take(&mut *collector.events.lock().unwrap_or_else(|e| e.into_inner()));
        for event in reported {
            let (Some(c1), Some(c2)) = (colliders.get(event.collider1), colliders.get(event.collider2)) else {
                continue;
            };
            let (a, b) = (c1.user_data as BodyId, c2.user_data as BodyId);
            // Rapier's force is the one the second collider receives; it is reported as
            // the one `body2` (the larger id) receives.
            let sign = if a < b { 1.0 } else { -1.0 };
            let (body1, body2) = ordered(a, b);
            self.tick.push(PhysicsEvent {
                step,
                body1,
                body2,
                kind: EventKind::ContactForce {
                    total_force: (event.total_force * sign).to_array(),
                    total_force_magnitude: event.total_force_magnitude,
                    max_force_direction: (event.max_force_direction * sign).to_array(),
                    max_force_magnitude: event.max_force_magnitude,
                },
            });
        }
    }
}

fn ordered(a: BodyId, b: BodyId) -> (BodyId, BodyId) {
    if a < b { (a, b) } else { (b, a) }
}

/// Collects the contact-force events rapier's solver raises during one step (collision
/// events are computed by [`Events::after_step`] instead).
#[derive(Default)]
pub(crate) struct ForceCollector {
    events: Mutex<Vec<ContactForceEvent>>,
}

impl EventHandler for ForceCollector {
    fn handle_collision_event(
        &self,
        _bodies: &RigidBodySet,
        _colliders: &ColliderSet,
        _event: rapier3d::prelude::CollisionEvent,
        _contact_pair: Option<&ContactPair>,
    ) {
    }

    fn handle_contact_force_event(
        &self,
        dt: f32,
        _bodies: &RigidBodySet,
        _colliders: &ColliderSet,
        contact_pair: &ContactPair,
        total_force_magnitude: f32,
    ) {
        let event = ContactForceEvent::from_contact_pair(dt, contact_pair, total_force_magnitude);
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    fn handle_soft_body_tear_event(&self, _soft_bodies: &SoftBodySet, _event: &SoftBodyTearEvent) {}
}
