//! Collision and contact-force events, delivered as Bevy messages shaped as
//! bevy_rapier3d's ([`CollisionEvent`], [`ContactForceEvent`]), exactly once.
//!
//! Each physics result carries its tick's events (peers and the local fallback compute
//! them the same way, see `p2c2r_sim`'s `events` module). The plugin keeps the pairs that
//! touch ([`Contacts`]: started and not yet stopped, in the results applied so far), and
//! every snapshot it sends carries them, so a world that takes the session over (another
//! peer, the local fallback, a peer handed back to) reports a pair still touching neither
//! started nor stopped, and one that no longer touches stopped, once. A pair whose body
//! the game removed before any world reported it stopped (the request that removed it
//! was lost with its peer) is reported stopped, `REMOVED`, when the next snapshot leaves
//! it out. So every `Started` is followed by exactly one `Stopped`, whoever steps the
//! world.

use std::collections::{BTreeMap, HashMap};

use bevy::math::Vec3;
use bevy::prelude::{Entity, Message, MessageWriter, ResMut, Resource};
use p2c2r_protocol::limits::MAX_TOUCHING_PAIRS;
use p2c2r_protocol::physics::{BodyDesc, BodyId, EventKind, PhysicsEvent, active_events};

use crate::ids::EntityIds;
use crate::stats::P2c2rStats;

/// Flags of a [`CollisionEvent`] (bevy_rapier3d's `CollisionEventFlags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CollisionEventFlags(pub u8);

impl CollisionEventFlags {
    /// One of the two is a [`crate::Sensor`].
    pub const SENSOR: Self = CollisionEventFlags(1);
    /// The pair stopped because one of them was removed from the world.
    pub const REMOVED: Self = CollisionEventFlags(2);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Two bodies started or stopped touching (bevy_rapier3d's `CollisionEvent`), for the
/// bodies with [`crate::ActiveEvents::COLLISION_EVENTS`]. The first entity is the body
/// with the smaller id. Written in the Apply stage after the [`crate::PhysicsStepped`]
/// of the tick it happened in (results applied in a hurry before a snapshot is sent have
/// theirs written at the next Apply), in a deterministic order (by step, stops before
/// starts, then by body ids).
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollisionEvent {
    /// They started touching (one entered the other, a sensor).
    Started(Entity, Entity, CollisionEventFlags),
    /// They stopped touching.
    Stopped(Entity, Entity, CollisionEventFlags),
}

/// Two bodies' contacts pushed harder than the threshold during a step (bevy_rapier3d's
/// `ContactForceEvent`), for bodies with [`crate::ActiveEvents::CONTACT_FORCE_EVENTS`].
#[derive(Message, Clone, Copy, Debug, PartialEq)]
pub struct ContactForceEvent {
    /// The body with the smaller id.
    pub collider1: Entity,
    /// The other.
    pub collider2: Entity,
    /// The sum of the contact forces on `collider2`, N.
    pub total_force: Vec3,
    /// The sum of their magnitudes.
    pub total_force_magnitude: f32,
    /// The direction of the strongest one.
    pub max_force_direction: Vec3,
    /// Its magnitude.
    pub max_force_magnitude: f32,
}

/// The pairs touching and the events waiting to be written (plugin-internal).
#[derive(Resource, Default, Debug)]
pub(crate) struct Contacts {
    /// Pairs touching, with whether one of them is a sensor.
    touching: BTreeMap<[BodyId; 2], bool>,
    pending: Vec<PhysicsEvent>,
}

impl Contacts {
    /// A result's events, applied: the touching pairs follow them, and they wait to be
    /// written. A world that contradicts the pairs held (a start of a touching pair, a
    /// stop of another) is answered by keeping the pairs consistent and dropping the
    /// contradiction, never by a second start.
    ///
    /// At most [`MAX_TOUCHING_PAIRS`] pairs are kept (what a snapshot may carry): a
    /// start past it, which only a broken or lying world reports, is dropped (and its
    /// stop with it), so a peer cannot grow the gamer's memory.
    pub fn record(&mut self, events: &[PhysicsEvent]) {
        for e in events {
            let pair = [e.body1, e.body2];
            let keep = match e.kind {
                EventKind::Started { .. } if self.touching.len() >= MAX_TOUCHING_PAIRS => false,
                EventKind::Started { sensor } => self.touching.insert(pair, sensor).is_none(),
                EventKind::Stopped { .. } => self.touching.remove(&pair).is_some(),
                EventKind::ContactForce { .. } => true,
            };
            if keep {
                self.pending.push(*e);
            }
        }
    }

    /// The touching pairs a snapshot of `add` carries: those of bodies it adds, one of
    /// which asks for collision events. The others (a body the game removed meanwhile)
    /// are reported stopped, removed, now.
    pub fn for_snapshot(&mut self, add: &[BodyDesc]) -> Vec<[BodyId; 2]> {
        let events: HashMap<BodyId, u8> = add.iter().map(|d| (d.id, d.active_events)).collect();
        let mut kept = Vec::with_capacity(self.touching.len());
        let mut gone = Vec::new();
        for (&[a, b], &sensor) in &self.touching {
            match (events.get(&a), events.get(&b)) {
                (Some(ea), Some(eb)) if (ea | eb) & active_events::COLLISION_EVENTS != 0 => kept.push([a, b]),
                _ => gone.push(([a, b], sensor)),
            }
        }
        for ([a, b], sensor) in gone {
            self.touching.remove(&[a, b]);
            let kind = EventKind::Stopped { sensor, removed: true };
            self.pending.push(PhysicsEvent { step: 0, body1: a, body2: b, kind });
        }
        kept
    }

    /// The pairs touching now.
    #[cfg(test)]
    pub fn touching(&self) -> Vec<[BodyId; 2]> {
        self.touching.keys().copied().collect()
    }
}

/// Writes the events recorded since the last run as messages (the Apply stage).
pub(crate) fn write_physics_events(
    mut contacts: ResMut<Contacts>,
    ids: bevy::prelude::Res<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    mut collisions: MessageWriter<CollisionEvent>,
    mut forces: MessageWriter<ContactForceEvent>,
) {
    stats.events.touching_pairs = contacts.touching.len();
    for e in std::mem::take(&mut contacts.pending) {
        // A body removed since (by the game, or for leaving the world) is still named.
        let (Some(a), Some(b)) = (ids.body_entity(e.body1), ids.body_entity(e.body2)) else { continue };
        match e.kind {
            EventKind::Started { sensor } => {
                stats.events.collisions += 1;
                collisions.write(CollisionEvent::Started(a, b, flags(sensor, false)));
            }
            EventKind::Stopped { sensor, removed } => {
                stats.events.collisions += 1;
                collisions.write(CollisionEvent::Stopped(a, b, flags(sensor, removed)));
            }
            EventKind::ContactForce {
                total_force,
                total_force_magnitude,
                max_force_direction,
                max_force_magnitude,
            } => {
                stats.events.contact_forces += 1;
                forces.write(ContactForceEvent {
                    collider1: a,
                    collider2: b,
                    total_force: Vec3::from_array(total_force),
                    total_force_magnitude,
                    max_force_direction: Vec3::from_array(max_force_direction),
                    max_force_magnitude,
                });
            }
        }
    }
}

fn flags(sensor: bool, removed: bool) -> CollisionEventFlags {
    let mut flags = 0;
    if sensor {
        flags |= CollisionEventFlags::SENSOR.0;
    }
    if removed {
        flags |= CollisionEventFlags::REMOVED.0;
    }
    CollisionEventFlags(flags)
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::Shape;

    use super::*;

    fn event(body1: BodyId, body2: BodyId, kind: EventKind) -> PhysicsEvent {
        PhysicsEvent { step: 0, body1, body2, kind }
    }

    #[test]
    fn pairs_follow_the_events_and_a_snapshot_stops_the_pairs_of_removed_bodies() {
        let mut contacts = Contacts::default();
        let started = EventKind::Started { sensor: false };
        contacts.record(&[event(1, 2, started), event(1, 3, started), event(2, 3, started)]);
        // A contradiction (a second start) is dropped, not delivered twice.
        contacts.record(&[event(1, 2, started)]);
        assert_eq!(contacts.pending.len(), 3);
        contacts.record(&[event(2, 3, EventKind::Stopped { sensor: false, removed: false })]);
        assert_eq!(contacts.touching(), [[1, 2], [1, 3]]);
        contacts.pending.clear();
        // Body 3 was removed by the game and its removal never answered: the snapshot
        // leaves it out, and its pair stops here.
        let listening = |id| BodyDesc {
            active_events: active_events::COLLISION_EVENTS,
            ..BodyDesc::new(id, Shape::Sphere { radius: 1.0 }, [0.0; 3])
        };
        assert_eq!(contacts.for_snapshot(&[listening(1), listening(2)]), [[1, 2]]);
        assert_eq!(contacts.pending, [event(1, 3, EventKind::Stopped { sensor: false, removed: true })]);
        assert_eq!(contacts.touching().len(), 1);
    }

    #[test]
    fn a_lying_world_cannot_grow_the_touching_pairs_past_what_a_snapshot_may_carry() {
        let mut contacts = Contacts::default();
        let starts: Vec<PhysicsEvent> = (0..MAX_TOUCHING_PAIRS as u64 + 10)
            .map(|i| event(i, i + 1, EventKind::Started { sensor: false }))
            .collect();
        contacts.record(&starts);
        assert_eq!((contacts.touching().len(), contacts.pending.len()), (MAX_TOUCHING_PAIRS, MAX_TOUCHING_PAIRS));
        // The stop of a dropped start is dropped too: every delivered start has one stop.
        contacts.pending.clear();
        let last = MAX_TOUCHING_PAIRS as u64 + 5;
        contacts.record(&[event(last, last + 1, EventKind::Stopped { sensor: false, removed: false })]);
        assert!(contacts.pending.is_empty());
    }
}
