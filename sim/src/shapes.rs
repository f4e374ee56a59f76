//! Collision shapes from the wire: checked as hostile input, then built into parry's.
//!
//! Everything a request's shapes hold is bounded before anything is built (counts by
//! [`limits`], every float finite and in range, every mesh index in range, a heightfield's
//! heights matching its grid), and a shape parry cannot build (a hull of points in one
//! plane, say) is a clear `invalid_payload`, never a panic: parry's constructors assert
//! on some inputs, so building also runs under `catch_unwind` as a last guard, and its
//! failure is an error like the others.

use std::panic::{AssertUnwindSafe, catch_unwind};

use p2c2r_protocol::physics::{CompoundPart, Quat, Shape, Vec3};
use p2c2r_protocol::{TaskError, limits};
use rapier3d::math::{Pose, Vector};
use rapier3d::parry::utils::Array2;
use rapier3d::prelude::{SharedShape, TriMeshFlags};

use limits::{MAX_COORDINATE, SHAPE_EXTENT_RANGE};

use crate::checks::{check_scalar, check_vec, invalid, limit, unit_quat};

/// The narrowest heightfield cell, metres.
pub const MIN_HEIGHTFIELD_CELL: f32 = 0.01;

/// Checks a shape's values and sizes; `what` names it in errors ("add: body 7").
pub fn check(shape: &Shape, what: &str) -> Result<(), TaskError> {
    let extent = |x: f32, name: &str| check_scalar(&format!("{what}: {name}"), x, SHAPE_EXTENT_RANGE);
    let half_height = |x: f32| check_scalar(&format!("{what}: half_height"), x, (0.0, SHAPE_EXTENT_RANGE.1));
    match shape {
        Shape::Box { half_extents } => half_extents.iter().try_for_each(|&x| extent(x, "half extent")),
        Shape::Sphere { radius } => extent(*radius, "radius"),
        Shape::Capsule { half_height: h, radius }
        | Shape::CapsuleX { half_height: h, radius }
        | Shape::CapsuleZ { half_height: h, radius } => {
            extent(*radius, "radius")?;
            half_height(*h)
        }
        Shape::Cylinder { half_height: h, radius } | Shape::Cone { half_height: h, radius } => {
            extent(*radius, "radius")?;
            extent(*h, "half_height")
        }
        Shape::ConvexHull { points } => {
            count(what, "convex hull points", points.len(), 4, limits::MAX_HULL_POINTS)?;
            points.iter().try_for_each(|p| check_point(what, "convex hull point", *p))
        }
        Shape::TriMesh { vertices, indices } => {
            count(what, "mesh vertices", vertices.len(), 3, limits::MAX_MESH_VERTICES)?;
            count(what, "mesh triangles", indices.len(), 1, limits::MAX_MESH_TRIANGLES)?;
            vertices.iter().try_for_each(|p| check_point(what, "mesh vertex", *p))?;
            let n = vertices.len();
            match indices.iter().flatten().find(|&&i| i as usize >= n) {
                Some(i) => Err(invalid(format!("{what}: mesh index {i} is past its {n} vertices"))),
                None => Ok(()),
            }
        }
        Shape::Heightfield { rows, columns, heights, scale } => {
            if *rows < 2 || *columns < 2 {
                return Err(invalid(format!("{what}: a heightfield needs at least 2 rows and 2 columns")));
            }
            let cells = u64::from(*rows) * u64::from(*columns);
            if cells > limits::MAX_HEIGHTFIELD_CELLS as u64 {
                return Err(limit(format!(
                    "{what}: a heightfield of {cells} cells; at most {} are allowed",
                    limits::MAX_HEIGHTFIELD_CELLS
                )));
            }
            if heights.len() as u64 != cells {
                return Err(invalid(format!(
                    "{what}: a heightfield of {rows} × {columns} needs {cells} heights, got {}",
                    heights.len()
                )));
            }
            if let Some(h) = heights.iter().find(|h| !(h.is_finite() && h.abs() <= MAX_COORDINATE)) {
                return Err(invalid(format!(
                    "{what}: heightfield heights must be finite within ±{MAX_COORDINATE:e}, got {h}"
                )));
            }
            scale.iter().try_for_each(|&x| {
                check_scalar(&format!("{what}: heightfield scale"), x, (SHAPE_EXTENT_RANGE.0, MAX_COORDINATE))
            })?;
            // Cells at least a centimetre wide: a body covers a bounded number of them.
            let (cell_x, cell_z) = (scale[0] / (*columns - 1) as f32, scale[2] / (*rows - 1) as f32);
            if cell_x.min(cell_z) < MIN_HEIGHTFIELD_CELL {
                return Err(invalid(format!(
                    "{what}: heightfield cells are {cell_x} × {cell_z} m; at least {MIN_HEIGHTFIELD_CELL} m is needed"
                )));
            }
            Ok(())
        }
        Shape::Cached { .. } => Err(invalid(format!(
            "{what}: a cached shape is looked up by the world's cache, and cannot be a compound's part"
        ))),
        Shape::Compound { parts } => {
            count(what, "compound parts", parts.len(), 1, limits::MAX_COMPOUND_PARTS)?;
            for (i, part) in parts.iter().enumerate() {
                if part.shape.is_composite() || matches!(part.shape, Shape::Cached { .. }) {
                    return Err(invalid(format!(
                        "{what}: compound part {i} is a mesh, a heightfield or a compound; parts must be convex"
                    )));
                }
                check(&part.shape, &format!("{what}: compound part {i}"))?;
                check_point(what, "compound part position", part.position)?;
                unit_quat(&format!("{what}: compound part {i} rotation"), part.rotation)?;
            }
            Ok(())
        }
    }
}

/// Builds a checked shape ([`check`] first).
pub fn build(shape: &Shape, what: &str) -> Result<SharedShape, TaskError> {
    let built = catch_unwind(AssertUnwindSafe(|| build_unguarded(shape, what)));
    built.unwrap_or_else(|_| Err(invalid(format!("{what}: the shape cannot be built (degenerate geometry)"))))
}

fn build_unguarded(shape: &Shape, what: &str) -> Result<SharedShape, TaskError> {
    Ok(match shape {
        Shape::Box { half_extents: [x, y, z] } => SharedShape::cuboid(*x, *y, *z),
        Shape::Sphere { radius } => SharedShape::ball(*radius),
        Shape::Capsule { half_height, radius } => SharedShape::capsule_y(*half_height, *radius),
        Shape::CapsuleX { half_height, radius } => SharedShape::capsule_x(*half_height, *radius),
        Shape::CapsuleZ { half_height, radius } => SharedShape::capsule_z(*half_height, *radius),
        Shape::Cylinder { half_height, radius } => SharedShape::cylinder(*half_height, *radius),
        Shape::Cone { half_height, radius } => SharedShape::cone(*half_height, *radius),
        Shape::ConvexHull { points } => {
            let points: Vec<Vector> = points.iter().map(|p| Vector::from_array(*p)).collect();
            let flat = || {
                invalid(format!(
                    "{what}: no convex hull of these points (they lie on one plane, or fewer than 4 differ)"
                ))
            };
            let hull = SharedShape::convex_hull(&points).ok_or_else(flat)?;
            // parry builds a flat hull from points in one plane: no volume, so no mass.
            let volume = hull.mass_properties(1.0).mass();
            if !(volume.is_finite() && volume > 0.0) {
                return Err(flat());
            }
            hull
        }
        Shape::TriMesh { vertices, indices } => {
            let vertices = vertices.iter().map(|p| Vector::from_array(*p)).collect();
            // Duplicate and degenerate triangles go: each would be a contact manifold of
            // its own for nothing.
            let flags = TriMeshFlags::DELETE_DUPLICATE_TRIANGLES | TriMeshFlags::DELETE_DEGENERATE_TRIANGLES;
            SharedShape::trimesh_with_flags(vertices, indices.clone(), flags)
                .map_err(|e| invalid(format!("{what}: the triangle mesh cannot be built: {e}")))?
        }
        Shape::Heightfield { rows, columns, heights, scale } => {
            // parry's grid: rows along z, columns along x, stored column after column.
            let (rows, columns) = (*rows as usize, *columns as usize);
            let by_column = (0..columns).flat_map(|c| (0..rows).map(move |r| heights[r * columns + c])).collect();
            SharedShape::heightfield(Array2::new(rows, columns, by_column), Vector::from_array(*scale))
        }
        Shape::Compound { parts } => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(i, CompoundPart { shape, position, rotation })| {
                    let rotation = unit_quat(&format!("{what}: compound part {i} rotation"), *rotation)?;
                    Ok((Pose::from_parts(Vector::from_array(*position), rotation), build_unguarded(shape, what)?))
                })
                .collect::<Result<Vec<_>, TaskError>>()?;
            SharedShape::compound(parts)
        }
        Shape::Cached { .. } => return Err(invalid(format!("{what}: a cached shape is built by the cache"))),
    })
}

/// The convex hull points a shape holds, its compound parts' included.
pub fn hull_points(shape: &Shape) -> usize {
    match shape {
        Shape::ConvexHull { points } => points.len(),
        Shape::Compound { parts } => parts.iter().map(|part| hull_points(&part.shape)).sum(),
        _ => 0,
    }
}

/// A box around a checked shape in its own frame: its centre and half extents.
pub fn local_box(shape: &Shape) -> (Vec3, Vec3) {
    match shape {
        Shape::Box { half_extents } => ([0.0; 3], *half_extents),
        Shape::Sphere { radius } => ([0.0; 3], [*radius; 3]),
        Shape::Capsule { half_height, radius } => ([0.0; 3], [*radius, half_height + radius, *radius]),
        Shape::CapsuleX { half_height, radius } => ([0.0; 3], [half_height + radius, *radius, *radius]),
        Shape::CapsuleZ { half_height, radius } => ([0.0; 3], [*radius, *radius, half_height + radius]),
        Shape::Cylinder { half_height, radius } | Shape::Cone { half_height, radius } => {
            ([0.0; 3], [*radius, *half_height, *radius])
        }
        Shape::ConvexHull { points: p } | Shape::TriMesh { vertices: p, .. } => around(p.iter().copied()),
        Shape::Heightfield { heights, scale, .. } => {
            let (low, high) = heights.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &h| (lo.min(h), hi.max(h)));
            let (low, high) = (low * scale[1], high * scale[1]);
            ([0.0, (low + high) / 2.0, 0.0], [scale[0] / 2.0, (high - low) / 2.0, scale[2] / 2.0])
        }
        Shape::Compound { parts } => around(parts.iter().flat_map(|part| {
            let (centre, half) = local_box(&part.shape);
            let (centre, half) = turned_box(centre, half, part.position, part.rotation);
            [std::array::from_fn(|i| centre[i] - half[i]), std::array::from_fn(|i| centre[i] + half[i])]
        })),
        // Resolved by the cache, which keeps the shape's own boxes (`local_boxes`).
        Shape::Cached { .. } => ([0.0; 3], [0.0; 3]),
    }
}

/// The boxes of a checked shape in its own frame: one per part of a compound, one for
/// anything else (what a cached shape keeps for the contact-pair budget).
pub fn local_boxes(shape: &Shape) -> Vec<(Vec3, Vec3)> {
    match shape {
        Shape::Compound { parts } => parts
            .iter()
            .map(|part| {
                let (centre, half) = local_box(&part.shape);
                turned_box(centre, half, part.position, part.rotation)
            })
            .collect(),
        _ => vec![local_box(shape)],
    }
}

/// The box around a box (`centre`, `half`) turned by `rotation` and moved by `position`.
pub fn turned_box(centre: Vec3, half: Vec3, position: Vec3, rotation: Quat) -> (Vec3, Vec3) {
    let m = matrix(rotation);
    let centre = std::array::from_fn(|i| position[i] + (0..3).map(|j| m[i][j] * centre[j]).sum::<f32>());
    let half = std::array::from_fn(|i| (0..3).map(|j| m[i][j].abs() * half[j]).sum::<f32>());
    (centre, half)
}

/// The rotation matrix of a unit quaternion `[x, y, z, w]`.
pub fn matrix([x, y, z, w]: Quat) -> [[f32; 3]; 3] {
    [
        [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - z * w), 2.0 * (x * z + y * w)],
        [2.0 * (x * y + z * w), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - x * w)],
        [2.0 * (x * z - y * w), 2.0 * (y * z + x * w), 1.0 - 2.0 * (x * x + y * y)],
    ]
}

fn around(points: impl Iterator<Item = Vec3>) -> (Vec3, Vec3) {
    let (mut low, mut high) = ([f32::MAX; 3], [f32::MIN; 3]);
    for p in points {
        for i in 0..3 {
            low[i] = low[i].min(p[i]);
            high[i] = high[i].max(p[i]);
        }
    }
    if low[0] > high[0] {
        return ([0.0; 3], [0.0; 3]);
    }
    (std::array::from_fn(|i| (low[i] + high[i]) / 2.0), std::array::from_fn(|i| (high[i] - low[i]) / 2.0))
}

fn count(what: &str, name: &str, n: usize, min: usize, max: usize) -> Result<(), TaskError> {
    if n > max {
        return Err(limit(format!("{what}: {n} {name}; at most {max} are allowed")));
    }
    if n < min {
        return Err(invalid(format!("{what}: {n} {name}; at least {min} are needed")));
    }
    Ok(())
}

fn check_point(what: &str, name: &str, p: Vec3) -> Result<(), TaskError> {
    check_vec(&format!("{what}: {name}"), p, MAX_COORDINATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c2r_protocol::ErrorCode;

    fn code(shape: Shape) -> Option<ErrorCode> {
        check(&shape, "s").and_then(|()| build(&shape, "s").map(|_| ())).err().map(|e| e.code)
    }

    #[test]
    fn degenerate_shapes_get_clear_errors_never_a_panic() {
        let tetra = vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(code(Shape::ConvexHull { points: tetra.clone() }), None);
        let line: Vec<Vec3> = (0..8).map(|i| [i as f32, 0.0, 0.0]).collect();
        assert_eq!(code(Shape::ConvexHull { points: line }), Some(ErrorCode::InvalidPayload), "collinear");
        let flat: Vec<Vec3> = (0..8).map(|i| [(i % 3) as f32, 0.0, (i / 3) as f32]).collect();
        assert_eq!(code(Shape::ConvexHull { points: flat }), Some(ErrorCode::InvalidPayload), "coplanar");
        assert_eq!(code(Shape::ConvexHull { points: vec![[0.0; 3]; 4] }), Some(ErrorCode::InvalidPayload), "one point");
        let mut nan = tetra.clone();
        nan[2][1] = f32::NAN;
        assert_eq!(code(Shape::ConvexHull { points: nan }), Some(ErrorCode::InvalidPayload));
        let vertices = vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(code(Shape::TriMesh { vertices: vertices.clone(), indices: vec![[0, 2, 1]] }), None);
        let past = Shape::TriMesh { vertices: vertices.clone(), indices: vec![[0, 2, 3]] };
        assert_eq!(code(past), Some(ErrorCode::InvalidPayload), "an index past the vertices");
        let mut nan = vertices.clone();
        nan[0][0] = f32::INFINITY;
        assert_eq!(code(Shape::TriMesh { vertices: nan, indices: vec![[0, 2, 1]] }), Some(ErrorCode::InvalidPayload));
        let huge = Shape::TriMesh { vertices, indices: vec![[0, 2, 1]; limits::MAX_MESH_TRIANGLES + 1] };
        assert_eq!(code(huge), Some(ErrorCode::LimitExceeded));
        let field = |rows: u32, columns: u32, n: usize| Shape::Heightfield {
            rows,
            columns,
            heights: vec![0.0; n],
            scale: [1.0; 3],
        };
        assert_eq!(code(field(2, 3, 6)), None);
        assert_eq!(code(field(2, 3, 5)), Some(ErrorCode::InvalidPayload), "heights do not fill the grid");
        assert_eq!(code(field(1, 3, 3)), Some(ErrorCode::InvalidPayload), "one row");
        assert_eq!(code(field(u32::MAX, u32::MAX, 4)), Some(ErrorCode::LimitExceeded), "absurd grid");
        let fine = Shape::Heightfield { rows: 3, columns: 3, heights: vec![0.0; 9], scale: [0.01, 1.0, 0.01] };
        assert_eq!(code(fine), Some(ErrorCode::InvalidPayload), "cells narrower than a centimetre");
        let part = |shape| CompoundPart { shape, position: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0] };
        assert_eq!(code(Shape::Compound { parts: vec![] }), Some(ErrorCode::InvalidPayload), "empty compound");
        let nested = Shape::Compound { parts: vec![part(field(2, 2, 4))] };
        assert_eq!(code(nested), Some(ErrorCode::InvalidPayload), "nested composite");
        let bad_rotation =
            Shape::Compound { parts: vec![CompoundPart { rotation: [0.0; 4], ..part(Shape::Sphere { radius: 1.0 }) }] };
        assert_eq!(code(bad_rotation), Some(ErrorCode::InvalidPayload));
        assert_eq!(code(Shape::Cone { half_height: 0.0, radius: 1.0 }), Some(ErrorCode::InvalidPayload));
    }

    #[test]
    fn local_boxes_hold_their_shapes() {
        assert_eq!(local_box(&Shape::CapsuleX { half_height: 1.0, radius: 0.5 }), ([0.0; 3], [1.5, 0.5, 0.5]));
        let hull = Shape::ConvexHull { points: vec![[0.0; 3], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]] };
        assert_eq!(local_box(&hull), ([1.0, 2.0, 0.5], [1.0, 2.0, 0.5]));
        let field =
            Shape::Heightfield { rows: 2, columns: 2, heights: vec![-1.0, 0.0, 0.0, 3.0], scale: [10.0, 2.0, 4.0] };
        assert_eq!(local_box(&field), ([0.0, 2.0, 0.0], [5.0, 4.0, 2.0]));
        // A part turned a quarter about z, moved up 2: its 1 × 0.5 box becomes 0.5 × 1.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let turned = CompoundPart {
            shape: Shape::Box { half_extents: [1.0, 0.5, 0.5] },
            position: [0.0, 2.0, 0.0],
            rotation: [0.0, 0.0, s, s],
        };
        let (centre, half) = local_box(&Shape::Compound { parts: vec![turned] });
        assert!(centre.iter().zip([0.0, 2.0, 0.0]).all(|(a, b)| (a - b).abs() < 1e-5), "{centre:?}");
        assert!(half.iter().zip([0.5, 1.0, 0.5]).all(|(a, b)| (a - b).abs() < 1e-5), "{half:?}");
    }
}
