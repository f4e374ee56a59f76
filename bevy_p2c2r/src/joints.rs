//! Joints between offloaded bodies, as bevy_rapier3d's: an [`ImpulseJoint`] on a body
//! holds it to its `parent` body (or to the world), with a [`JointData`] built like
//! rapier's joint builders. Changing the component changes the joint; removing it (or
//! either body) removes the joint.

use bevy::math::Vec3;
use bevy::prelude::{Component, Entity};
use p2c2r_protocol::physics::{BodyId, JointDesc, JointId, JointKind, JointMotor};

/// What a joint allows, where it holds each body, and whether the two bodies still
/// collide: bevy_rapier3d's `TypedJoint`, built like rapier's joint builders.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointData {
    /// The kind, with its axis, limits and motor.
    pub kind: JointKind,
    /// Where it holds the parent, in the parent's frame (in world coordinates for a
    /// joint to the world).
    pub local_anchor1: Vec3,
    /// Where it holds this body, in its frame.
    pub local_anchor2: Vec3,
    /// Whether the two bodies still collide with each other (default no, as rapier).
    pub contacts_enabled: bool,
}

impl JointData {
    fn of(kind: JointKind) -> Self {
        JointData { kind, local_anchor1: Vec3::ZERO, local_anchor2: Vec3::ZERO, contacts_enabled: false }
    }

    /// No relative motion (rapier's `FixedJointBuilder`).
    pub fn fixed() -> Self {
        Self::of(JointKind::Fixed)
    }

    /// A hinge about `axis` (rapier's `RevoluteJointBuilder`).
    pub fn revolute(axis: Vec3) -> Self {
        Self::of(JointKind::Revolute { axis: axis.to_array(), limits: None, motor: None })
    }

    /// A slider along `axis` (rapier's `PrismaticJointBuilder`).
    pub fn prismatic(axis: Vec3) -> Self {
        Self::of(JointKind::Prismatic { axis: axis.to_array(), limits: None, motor: None })
    }

    /// A ball joint (rapier's `SphericalJointBuilder`).
    pub fn spherical() -> Self {
        Self::of(JointKind::Spherical)
    }

    /// The anchors at most `max_distance` apart (rapier's `RopeJointBuilder`).
    pub fn rope(max_distance: f32) -> Self {
        Self::of(JointKind::Rope { max_distance })
    }

    /// A spring between the anchors (rapier's `SpringJointBuilder`).
    pub fn spring(rest_length: f32, stiffness: f32, damping: f32) -> Self {
        Self::of(JointKind::Spring { rest_length, stiffness, damping })
    }

    /// Sets where it holds the parent.
    pub fn local_anchor1(mut self, anchor: Vec3) -> Self {
        self.local_anchor1 = anchor;
        self
    }

    /// Sets where it holds this body.
    pub fn local_anchor2(mut self, anchor: Vec3) -> Self {
        self.local_anchor2 = anchor;
        self
    }

    /// Sets the smallest and largest angle (a hinge, radians) or offset (a slider,
    /// metres); other kinds have none.
    pub fn limits(mut self, limits: [f32; 2]) -> Self {
        if let JointKind::Revolute { limits: l, .. } | JointKind::Prismatic { limits: l, .. } = &mut self.kind {
            *l = Some(limits);
        }
        self
    }

    /// Drives a hinge or slider towards `target_position` with `stiffness`, damped by
    /// `damping` (rapier's `motor_position`).
    pub fn motor_position(self, target_position: f32, stiffness: f32, damping: f32) -> Self {
        self.motor(JointMotor { target_position, target_velocity: 0.0, stiffness, damping, max_force: None })
    }

    /// Drives a hinge or slider at `target_velocity` with `damping` (rapier's
    /// `motor_velocity`).
    pub fn motor_velocity(self, target_velocity: f32, damping: f32) -> Self {
        self.motor(JointMotor { target_position: 0.0, target_velocity, stiffness: 0.0, damping, max_force: None })
    }

    /// Caps the motor's force (or torque).
    pub fn motor_max_force(mut self, max_force: f32) -> Self {
        if let JointKind::Revolute { motor: Some(m), .. } | JointKind::Prismatic { motor: Some(m), .. } = &mut self.kind
        {
            m.max_force = Some(max_force);
        }
        self
    }

    /// Sets a hinge's or slider's motor.
    pub fn motor(mut self, motor: JointMotor) -> Self {
        if let JointKind::Revolute { motor: m, .. } | JointKind::Prismatic { motor: m, .. } = &mut self.kind {
            *m = Some(motor);
        }
        self
    }

    /// Lets the two bodies collide.
    pub fn contacts_enabled(mut self, enabled: bool) -> Self {
        self.contacts_enabled = enabled;
        self
    }
}

/// Holds this body to its `parent` (bevy_rapier3d's `ImpulseJoint`); with no parent, to
/// the world (`local_anchor1` is then a point in the world). The joint's angle or offset
/// is this body's against its parent's.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct ImpulseJoint {
    /// The other body, or the world.
    pub parent: Option<Entity>,
    /// The joint.
    pub data: JointData,
}

impl ImpulseJoint {
    /// A joint to `parent`.
    pub fn new(parent: Entity, data: JointData) -> Self {
        ImpulseJoint { parent: Some(parent), data }
    }

    /// A joint to the world, anchored at `data.local_anchor1` (world coordinates).
    pub fn to_world(data: JointData) -> Self {
        ImpulseJoint { parent: None, data }
    }

    /// The wire joint, for these ids.
    pub(crate) fn desc(&self, id: JointId, body: BodyId, parent: Option<BodyId>) -> JointDesc {
        let d = &self.data;
        match parent {
            // The wire's first body is the one measured against.
            Some(parent) => JointDesc {
                id,
                body1: parent,
                body2: Some(body),
                kind: d.kind,
                anchor1: d.local_anchor1.to_array(),
                anchor2: d.local_anchor2.to_array(),
                contacts_enabled: d.contacts_enabled,
            },
            None => JointDesc {
                id,
                body1: body,
                body2: None,
                kind: d.kind,
                anchor1: d.local_anchor2.to_array(),
                anchor2: d.local_anchor1.to_array(),
                contacts_enabled: d.contacts_enabled,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joints_map_onto_the_wire_with_the_parent_first_or_the_world_second() {
        let door = JointData::revolute(Vec3::Y)
            .local_anchor1(Vec3::new(-4.5, 1.0, 0.0))
            .local_anchor2(Vec3::new(-0.5, 0.0, 0.0))
            .limits([-1.5, 1.5])
            .motor_velocity(1.0, 5.0)
            .motor_max_force(20.0);
        let JointKind::Revolute { limits, motor: Some(m), .. } = door.kind else { panic!("{door:?}") };
        assert_eq!((limits, m.target_velocity, m.damping, m.max_force), (Some([-1.5, 1.5]), 1.0, 5.0, Some(20.0)));
        let to_world = ImpulseJoint::to_world(door).desc(3, 7, None);
        assert_eq!((to_world.body1, to_world.body2, to_world.anchor2), (7, None, [-4.5, 1.0, 0.0]));
        let parent = Entity::from_raw_u32(1).unwrap();
        let link = ImpulseJoint::new(parent, JointData::spherical().contacts_enabled(true)).desc(4, 9, Some(8));
        assert_eq!((link.body1, link.body2, link.contacts_enabled), (8, Some(9), true));
        // Limits and motors mean nothing to a ball joint: left out.
        assert_eq!(JointData::spherical().limits([0.0, 1.0]).motor_velocity(1.0, 1.0).kind, JointKind::Spherical);
    }
}
