//! The checks every hostile value from the wire goes through, with the errors they give.

use p2c2r_protocol::physics::{Quat, Vec3};
use p2c2r_protocol::{ErrorCode, TaskError};
use rapier3d::math::Rotation;

/// An `invalid_payload` error.
pub(crate) fn invalid(message: String) -> TaskError {
    TaskError::new(ErrorCode::InvalidPayload, message)
}

/// A `limit_exceeded` error.
pub(crate) fn limit(message: String) -> TaskError {
    TaskError::new(ErrorCode::LimitExceeded, message)
}

/// Every component finite and within ±`max`.
pub(crate) fn check_vec(what: &str, v: Vec3, max: f32) -> Result<(), TaskError> {
    if v.iter().all(|x| x.is_finite() && x.abs() <= max) {
        Ok(())
    } else {
        Err(invalid(format!("{what} must hold finite numbers within ±{max:e}, got {v:?}")))
    }
}

/// Finite and within `[min, max]`.
pub(crate) fn check_scalar(what: &str, x: f32, (min, max): (f32, f32)) -> Result<(), TaskError> {
    if x.is_finite() && x >= min && x <= max {
        Ok(())
    } else {
        Err(invalid(format!("{what} must be a number in [{min:e}, {max:e}], got {x}")))
    }
}

/// Normalizes a rotation that is close to unit length; rejects anything else.
pub(crate) fn unit_quat(what: &str, q: Quat) -> Result<Rotation, TaskError> {
    let rotation = Rotation::from_array(q);
    let norm = rotation.length();
    if q.iter().all(|x| x.is_finite()) && (0.9..=1.1).contains(&norm) {
        Ok(if norm == 1.0 { rotation } else { rotation.normalize() })
    } else {
        Err(invalid(format!("{what} must be a unit quaternion [x, y, z, w], got {q:?}")))
    }
}
