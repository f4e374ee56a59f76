//! Everything that needs a window: meshes and materials for what the game spawns, the sun,
//! the orbit camera that fires balls, the keys that add and kill peers, the HUD, and the
//! `--screenshot` automation. Meshes and materials are procedural; nothing is loaded.

use std::collections::HashMap;
use std::f32::consts::FRAC_PI_2;
use std::path::PathBuf;

use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll};
use bevy::light::CascadeShadowConfigBuilder;
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};

use crate::HudState;
use crate::game::{BALL_SPEED, DemoCounters, DemoSettings, Drawn, FireBall, Role};
use crate::hud::{HudData, hud_text};
use crate::level::{BodyShape, Level, StaticKind};
use crate::player::{AimMarker, Autopilot, Player, PlayerInput};
use crate::playground::{DrawnMesh, Piece, Spark};

/// Draws the game: add after [`crate::game::GamePlugin`] in a windowed app.
pub struct RenderPlugin {
    /// Save a screenshot here after `frames` frames, then exit.
    pub screenshot: Option<PathBuf>,
}

impl Plugin for RenderPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(ScreenshotRequest(self.screenshot.clone()))
            .init_resource::<MeshCache>()
            .insert_resource(ClearColor(Color::srgb(0.55, 0.7, 0.85)))
            .add_observer(attach_mesh)
            .add_observer(attach_drawn_mesh)
            .add_observer(attach_spark)
            .add_observer(attach_zone)
            .add_observer(attach_marker)
            .add_systems(Startup, (setup_scene, setup_hud))
            .add_systems(
                Update,
                (
                    player_controls.run_if(not(resource_exists::<Autopilot>)),
                    orbit_camera,
                    turn_visors,
                    fire_on_click,
                    update_hud,
                    screenshot_when_done,
                )
                    .chain()
                    .before(crate::player::PlayerSystems),
            );
    }
}

/// Draws a triangle mesh (the playground's terrain and half-pipe).
fn attach_drawn_mesh(
    add: On<Add, DrawnMesh>,
    drawn: Query<&DrawnMesh>,
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Ok(d) = drawn.get(add.entity) else { return };
    let mut mesh = Mesh::new(
        bevy::mesh::PrimitiveTopology::TriangleList,
        bevy::asset::RenderAssetUsages::RENDER_WORLD | bevy::asset::RenderAssetUsages::MAIN_WORLD,
    );
    mesh.insert_attribute(Mesh::ATTRIBUTE_POSITION, d.positions.clone());
    mesh.insert_indices(bevy::mesh::Indices::U32(d.indices.iter().flatten().copied().collect()));
    mesh.compute_smooth_normals();
    let material = StandardMaterial {
        base_color: Color::srgb(d.color[0], d.color[1], d.color[2]),
        perceptual_roughness: 0.9,
        double_sided: true,
        cull_mode: None,
        ..default()
    };
    commands.entity(add.entity).insert((Mesh3d(meshes.add(mesh)), MeshMaterial3d(materials.add(material))));
}

/// A spark: a small glowing ball where a collision started.
fn attach_spark(
    add: On<Add, Spark>,
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let ball =
        glowing_ball(&mut meshes, &mut materials, 0.12, Color::srgb(1.0, 0.9, 0.3), LinearRgba::rgb(8.0, 5.0, 1.0));
    commands.entity(add.entity).insert(ball);
}

/// The aim's hit marker: a small glowing red ball.
fn attach_marker(
    add: On<Add, AimMarker>,
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let ball =
        glowing_ball(&mut meshes, &mut materials, 0.15, Color::srgb(1.0, 0.1, 0.1), LinearRgba::rgb(6.0, 0.3, 0.3));
    commands.entity(add.entity).insert(ball);
}

/// A small unlit ball that glows in `emissive`.
fn glowing_ball(
    meshes: &mut Assets<Mesh>,
    materials: &mut Assets<StandardMaterial>,
    radius: f32,
    base_color: Color,
    emissive: LinearRgba,
) -> impl Bundle {
    let mesh = meshes.add(Sphere::new(radius).mesh().uv(12, 8));
    let material = materials.add(StandardMaterial { base_color, emissive, unlit: true, ..default() });
    (Mesh3d(mesh), MeshMaterial3d(material))
}

/// The visor of an NPC or the player: shows which way it faces.
#[derive(Component)]
struct Visor(Vec3);

/// Turns the player's visor to its heading (an NPC's body turns with it).
fn turn_visors(players: Query<(&Player, &Children)>, mut visors: Query<(&Visor, &mut Transform)>) {
    for (player, children) in &players {
        for child in children {
            if let Ok((visor, mut t)) = visors.get_mut(*child) {
                let turn = Quat::from_rotation_y(player.heading);
                *t = Transform::from_translation(turn * visor.0).with_rotation(turn);
            }
        }
    }
}

/// The keys and the mouse drive the player: WASD (or the arrows) walk relative to the
/// camera, Space jumps, the cursor aims.
fn player_controls(
    keys: Res<ButtonInput<KeyCode>>,
    windows: Query<&Window>,
    cameras: Query<(&Camera, &GlobalTransform, &OrbitCamera)>,
    mut input: ResMut<PlayerInput>,
) {
    let Ok((camera, global, orbit)) = cameras.single() else { return };
    let mut walk = Vec2::ZERO;
    for (k, d) in [
        (KeyCode::KeyW, Vec2::NEG_Y),
        (KeyCode::ArrowUp, Vec2::NEG_Y),
        (KeyCode::KeyS, Vec2::Y),
        (KeyCode::ArrowDown, Vec2::Y),
        (KeyCode::KeyA, Vec2::NEG_X),
        (KeyCode::ArrowLeft, Vec2::NEG_X),
        (KeyCode::KeyD, Vec2::X),
        (KeyCode::ArrowRight, Vec2::X),
    ] {
        if keys.pressed(k) {
            walk += d;
        }
    }
    let turned = Quat::from_rotation_y(orbit.yaw) * Vec3::new(walk.x, 0.0, walk.y);
    input.walk = turned.xz().normalize_or_zero();
    input.jump |= keys.just_pressed(KeyCode::Space);
    let cursor = windows.iter().find_map(Window::cursor_position);
    input.aim = cursor.and_then(|c| camera.viewport_to_world(global, c).ok()).map(|ray| (ray.origin, *ray.direction));
}

/// The trigger zone: a translucent box.
fn attach_zone(
    add: On<Add, Piece>,
    pieces: Query<(&Piece, &bevy_p2c2r::Collider)>,
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Ok((Piece::Zone, collider)) = pieces.get(add.entity) else { return };
    let p2c2r_protocol::physics::Shape::Box { half_extents } = collider.shape() else { return };
    let mesh = meshes.add(Cuboid::from_size(Vec3::from(*half_extents) * 2.0));
    let material = materials.add(StandardMaterial {
        base_color: Color::srgba(0.2, 0.8, 1.0, 0.25),
        alpha_mode: AlphaMode::Blend,
        emissive: LinearRgba::rgb(0.0, 0.3, 0.5),
        ..default()
    });
    commands.entity(add.entity).insert((Mesh3d(mesh), MeshMaterial3d(material)));
}

#[derive(Resource)]
/// Where `--screenshot` saves, if it was given.
pub struct ScreenshotRequest(pub Option<PathBuf>);

/// The player's camera: orbits `focus` at `distance`.
#[derive(Component, Clone, Debug)]
pub struct OrbitCamera {
    /// The point looked at.
    pub focus: Vec3,
    /// Distance from the focus.
    pub distance: f32,
    /// Heading, radians.
    pub yaw: f32,
    /// Elevation, radians (negative looks down).
    pub pitch: f32,
}

impl OrbitCamera {
    /// The camera transform for this orbit.
    pub fn transform(&self) -> Transform {
        let rotation = Quat::from_euler(EulerRot::YXZ, self.yaw, self.pitch, 0.0);
        let translation = self.focus + rotation * Vec3::new(0.0, 0.0, self.distance);
        Transform::from_translation(translation).with_rotation(rotation)
    }
}

#[derive(Resource, Default)]
struct MeshCache {
    meshes: HashMap<[u32; 4], Handle<Mesh>>,
    materials: HashMap<([u32; 3], u8), Handle<StandardMaterial>>,
}

fn shape_key(shape: BodyShape) -> [u32; 4] {
    match shape {
        BodyShape::Box(h) => [0, h.x.to_bits(), h.y.to_bits(), h.z.to_bits()],
        BodyShape::Sphere(r) => [1, r.to_bits(), 0, 0],
        BodyShape::Capsule(r, h) => [2, r.to_bits(), h.to_bits(), 0],
    }
}

fn attach_mesh(
    add: On<Add, Drawn>,
    drawn: Query<&Drawn>,
    mut commands: Commands,
    mut cache: ResMut<MeshCache>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Ok(d) = drawn.get(add.entity) else { return };
    let mesh = cache
        .meshes
        .entry(shape_key(d.shape))
        .or_insert_with(|| match d.shape {
            BodyShape::Box(h) => meshes.add(Cuboid::from_size(h * 2.0)),
            BodyShape::Sphere(r) => {
                meshes.add(Sphere::new(r).mesh().ico(3).unwrap_or_else(|_| Sphere::new(r).mesh().uv(24, 16)))
            }
            BodyShape::Capsule(r, h) => meshes.add(Capsule3d::new(r, 2.0 * h)),
        })
        .clone();
    let look: u8 = match d.role {
        Role::Static(StaticKind::Ground) => 0,
        Role::Static(_) => 1,
        Role::Stacked => 2,
        Role::Ball => 3,
        Role::Npc | Role::Player => 4,
    };
    let material = cache
        .materials
        .entry((d.color.map(f32::to_bits), look))
        .or_insert_with(|| {
            let base_color = Color::srgb(d.color[0], d.color[1], d.color[2]);
            materials.add(match look {
                0 => StandardMaterial { base_color, perceptual_roughness: 0.95, ..default() },
                1 => StandardMaterial { base_color, perceptual_roughness: 0.8, ..default() },
                3 => StandardMaterial {
                    base_color,
                    emissive: LinearRgba::rgb(2.0, 0.5, 0.1),
                    perceptual_roughness: 0.3,
                    ..default()
                },
                4 => StandardMaterial { base_color, metallic: 0.1, perceptual_roughness: 0.4, ..default() },
                _ => StandardMaterial { base_color, perceptual_roughness: 0.5, ..default() },
            })
        })
        .clone();
    commands.entity(add.entity).insert((Mesh3d(mesh), MeshMaterial3d(material)));
    if matches!(d.role, Role::Npc | Role::Player) {
        // A visor so you can see which way an NPC faces.
        let visor = meshes.add(Cuboid::new(0.5, 0.15, 0.2));
        let visor_material = materials.add(StandardMaterial {
            base_color: Color::srgb(0.1, 0.1, 0.15),
            emissive: LinearRgba::rgb(0.0, 0.6, 1.2),
            ..default()
        });
        if let BodyShape::Capsule(r, h) = d.shape {
            let at = Vec3::new(0.0, h + r * 0.3, -r * 0.85);
            commands.entity(add.entity).with_child((
                Visor(at),
                Mesh3d(visor),
                MeshMaterial3d(visor_material),
                Transform::from_translation(at),
            ));
        }
    }
}

fn setup_scene(mut commands: Commands, level: Res<Level>) {
    commands.insert_resource(GlobalAmbientLight {
        color: Color::WHITE,
        brightness: level.ambient_light,
        affects_lightmapped_meshes: true,
    });
    let dir = Vec3::from(level.sun.direction).normalize_or(Vec3::NEG_Y);
    commands.spawn((
        Name::new("sun"),
        DirectionalLight {
            color: Color::srgb(1.0, 0.97, 0.9),
            illuminance: level.sun.illuminance,
            shadow_maps_enabled: true,
            ..default()
        },
        Transform::default().looking_to(dir, Vec3::Y),
        CascadeShadowConfigBuilder {
            num_cascades: 2,
            first_cascade_far_bound: 25.0,
            maximum_distance: 90.0,
            ..default()
        }
        .build(),
    ));
    let c = &level.camera;
    let orbit = OrbitCamera {
        focus: Vec3::from(c.focus),
        distance: c.distance,
        yaw: c.yaw_deg.to_radians(),
        pitch: c.pitch_deg.to_radians(),
    };
    commands.spawn((Name::new("camera"), Camera3d::default(), orbit.transform(), orbit));
}

#[derive(Component)]
struct HudText;

fn setup_hud(mut commands: Commands) {
    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                top: px(10),
                left: px(10),
                padding: UiRect::all(px(8)),
                ..default()
            },
            BackgroundColor(Color::srgba(0.0, 0.0, 0.0, 0.6)),
        ))
        .with_child((
            Text::new(hud_text(&HudData::default())),
            TextFont { font_size: bevy::text::FontSize::Px(15.0), ..default() },
            TextColor(Color::WHITE),
            HudText,
        ));
}

fn update_hud(state: Res<HudState>, mut text: Query<&mut Text, With<HudText>>) {
    if !state.is_changed() {
        return;
    }
    for mut t in &mut text {
        t.0 = hud_text(&state.0);
    }
}

/// With a player: the camera follows it (third person); without, WASD pans over the
/// arena. The right or middle mouse button turns it, the wheel zooms.
#[allow(clippy::too_many_arguments)] // a system's parameters
fn orbit_camera(
    mut cameras: Query<(&mut OrbitCamera, &mut Transform), Without<Player>>,
    players: Query<&Transform, With<Player>>,
    buttons: Res<ButtonInput<MouseButton>>,
    keys: Res<ButtonInput<KeyCode>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    time: Res<Time>,
    mut following: Local<bool>,
) {
    let limit = FRAC_PI_2 - 0.05;
    let player = players.single().ok().map(|t| t.translation);
    for (mut orbit, mut transform) in &mut cameras {
        if let Some(at) = player {
            if !std::mem::replace(&mut *following, true) {
                // Third person: close behind the player, looking the way the course goes.
                (orbit.distance, orbit.yaw, orbit.pitch) = (9.0, 0.35, -0.5);
            }
            let focus = at + Vec3::Y * 0.8;
            orbit.focus = orbit.focus.lerp(focus, (time.delta_secs() * 8.0).min(1.0));
        }
        if buttons.pressed(MouseButton::Right) || buttons.pressed(MouseButton::Middle) {
            orbit.yaw -= motion.delta.x * 0.005;
            orbit.pitch = (orbit.pitch - motion.delta.y * 0.005).clamp(-limit, -0.02);
        }
        orbit.distance = (orbit.distance * (1.0 - scroll.delta.y * 0.08)).clamp(4.0, 90.0);
        let mut pan = Vec2::ZERO;
        for (k, d) in [
            (KeyCode::KeyW, Vec2::NEG_Y),
            (KeyCode::ArrowUp, Vec2::NEG_Y),
            (KeyCode::KeyS, Vec2::Y),
            (KeyCode::ArrowDown, Vec2::Y),
            (KeyCode::KeyA, Vec2::NEG_X),
            (KeyCode::ArrowLeft, Vec2::NEG_X),
            (KeyCode::KeyD, Vec2::X),
            (KeyCode::ArrowRight, Vec2::X),
        ] {
            if keys.pressed(k) {
                pan += d;
            }
        }
        if pan != Vec2::ZERO && player.is_none() {
            let heading = Quat::from_rotation_y(orbit.yaw);
            let step = heading * Vec3::new(pan.x, 0.0, pan.y).normalize() * orbit.distance * 0.6 * time.delta_secs();
            orbit.focus = (orbit.focus + step).clamp(Vec3::new(-25.0, 0.0, -25.0), Vec3::new(25.0, 5.0, 25.0));
        }
        *transform = orbit.transform();
    }
}

fn fire_on_click(
    buttons: Res<ButtonInput<MouseButton>>,
    windows: Query<&Window>,
    cameras: Query<(&Camera, &GlobalTransform), With<OrbitCamera>>,
    level: Res<Level>,
    mut fire: MessageWriter<FireBall>,
) {
    if !buttons.just_pressed(MouseButton::Left) {
        return;
    }
    let Some(cursor) = windows.iter().find_map(Window::cursor_position) else { return };
    for (camera, global) in &cameras {
        if let Ok(ray) = camera.viewport_to_world(global, cursor) {
            let origin = ray.origin + *ray.direction * 1.5;
            fire.write(FireBall { origin, velocity: shot_velocity(origin, *ray.direction, level.gravity[1]) });
        }
    }
}

/// Height above the ground a click aims at, m (about the middle of the stacks).
const AIM_HEIGHT: f32 = 1.0;
/// Farthest a click aims, m.
const AIM_RANGE: f32 = 80.0;

/// The velocity of a ball fired from `origin` through the cursor ray `dir`: it lands
/// where the ray meets the plane `y = AIM_HEIGHT` (gravity compensated), or flies
/// straight if the ray points above the horizon.
pub fn shot_velocity(origin: Vec3, dir: Vec3, gravity_y: f32) -> Vec3 {
    if dir.y < -0.01 {
        let t = ((AIM_HEIGHT - origin.y) / dir.y).clamp(0.0, AIM_RANGE);
        crate::game::aim(origin, origin + dir * t, BALL_SPEED, gravity_y)
    } else {
        dir * BALL_SPEED
    }
}

fn screenshot_when_done(
    mut commands: Commands,
    request: Res<ScreenshotRequest>,
    settings: Res<DemoSettings>,
    counters: Res<DemoCounters>,
    mut taken: Local<bool>,
) {
    let (Some(path), Some(frames)) = (&request.0, settings.frames) else { return };
    if *taken || counters.frames < frames {
        return;
    }
    *taken = true;
    info!("taking a screenshot to {} after {} frames", path.display(), counters.frames);
    commands.spawn(Screenshot::primary_window()).observe(save_to_disk(path.clone())).observe(
        |_: On<bevy::render::view::screenshot::ScreenshotCaptured>, mut exit: MessageWriter<AppExit>| {
            exit.write(AppExit::Success);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_lands_where_the_cursor_ray_meets_the_stacks() {
        let origin = Vec3::new(20.0, 30.0, 35.0);
        let target = Vec3::new(0.0, AIM_HEIGHT, 0.0);
        let dir = (target - origin).normalize();
        let v = shot_velocity(origin, dir, -9.81);
        let t = (target - origin).length() / BALL_SPEED;
        let at = origin + v * t + 0.5 * Vec3::new(0.0, -9.81, 0.0) * t * t;
        assert!(at.distance(target) < 1e-2, "{at}");
        // Above the horizon: straight along the ray.
        let up = Vec3::new(0.0, 0.2, -1.0).normalize();
        assert_eq!(shot_velocity(origin, up, -9.81), up * BALL_SPEED);
    }

    #[test]
    fn orbit_camera_looks_at_its_focus() {
        let orbit = OrbitCamera { focus: Vec3::new(1.0, 0.0, 2.0), distance: 10.0, yaw: 0.7, pitch: -0.6 };
        let t = orbit.transform();
        assert!((t.translation.distance(orbit.focus) - 10.0).abs() < 1e-4);
        let looking_at = t.translation + t.forward() * 10.0;
        assert!(looking_at.distance(orbit.focus) < 1e-3, "{looking_at}");
        assert!(t.translation.y > orbit.focus.y, "looks down");
    }
}
