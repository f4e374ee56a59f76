//! The Interpolate stage: each offloaded entity's `Transform`, between the last two ticks.

use bevy::prelude::*;

use crate::components::PoseInterpolation;
use crate::plugin::P2c2rConfiguration;

/// Writes each [`PoseInterpolation`]'s pose at the fixed clock's overstep into its
/// `Transform`, so motion is smooth at any frame rate (or the latest tick's pose, with
/// interpolation off).
pub(crate) fn interpolate(
    time: Res<Time<Fixed>>,
    settings: Res<P2c2rConfiguration>,
    mut q: Query<(&PoseInterpolation, &mut Transform)>,
) {
    let alpha = if settings.interpolation { time.overstep_fraction() } else { 1.0 };
    for (p, mut t) in &mut q {
        let (pos, rot) = p.lerp(alpha);
        if t.translation != pos || t.rotation != rot {
            t.translation = pos;
            t.rotation = rot;
        }
    }
}
