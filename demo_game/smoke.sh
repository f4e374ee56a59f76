#!/usr/bin/env bash
# Windowed smoke test of the demo game: runs it under Xvfb with software Vulkan (Mesa's
# lavapipe, Debian/Ubuntu package mesa-vulkan-drivers), lets it play FRAMES frames with the
# embedded coordinator and peer, saves a screenshot and checks that it is not blank and
# that the physics playground is in the scene, its events flowing, and that the player
# (on --autoplay) walks and aims.
#
#   demo_game/smoke.sh [OUT_DIR]        (default OUT_DIR: $CARGO_TARGET_DIR/smoke or target/smoke)
#
# Environment: SMOKE_FRAMES (default 120), SMOKE_DISPLAY (default :99), SMOKE_TIMEOUT
# (seconds, default 600), CARGO_TARGET_DIR as usual.
# Needs (Debian/Ubuntu): pkg-config libasound2-dev libudev-dev libwayland-dev libxkbcommon-dev
# libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon-x11-0 xvfb mesa-vulkan-drivers.
# Leaves OUT_DIR/screenshot.png, OUT_DIR/report.json (the game's JSON line),
# OUT_DIR/stats.json (image statistics) and OUT_DIR/game.log.
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="${1:-$target_dir/smoke}"
frames="${SMOKE_FRAMES:-120}"
display="${SMOKE_DISPLAY:-:99}"
limit="${SMOKE_TIMEOUT:-600}"
mkdir -p "$out"
rm -f "$out/screenshot.png" "$out/report.json" "$out/stats.json"

cargo build -p demo_game --bin demo_game --example check_screenshot

Xvfb "$display" -screen 0 1280x720x24 -nolisten tcp >"$out/xvfb.log" 2>&1 &
xvfb_pid=$!
trap 'kill "$xvfb_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    [ -e "/tmp/.X11-unix/X${display#:}" ] && break
    sleep 0.1
done
kill -0 "$xvfb_pid" || { echo "smoke: Xvfb did not start"; cat "$out/xvfb.log"; exit 1; }

# Force X11 and the software Vulkan driver so the result does not depend on the host.
unset WAYLAND_DISPLAY
export DISPLAY="$display"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
lvp_icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true)
if [ -n "$lvp_icd" ] && [ -z "${VK_ICD_FILENAMES:-}" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
    export VK_DRIVER_FILES="$lvp_icd" VK_ICD_FILENAMES="$lvp_icd"
fi

echo "smoke: running demo_game for $frames frames on $DISPLAY"
status=0
timeout "$limit" "$target_dir/debug/demo_game" --frames "$frames" --screenshot "$out/screenshot.png" \
    --autoplay --window-size 1280x720 >"$out/report.json" 2>"$out/game.log" || status=$?
if [ "$status" -ne 0 ]; then
    echo "smoke: demo_game exited with $status; last lines of its log:"
    tail -n 40 "$out/game.log"
    exit 1
fi
echo "smoke: report: $(cat "$out/report.json")"
[ -s "$out/screenshot.png" ] || { echo "smoke: no screenshot written"; tail -n 40 "$out/game.log"; exit 1; }

"$target_dir/debug/examples/check_screenshot" "$out/screenshot.png" | tee "$out/stats.json"
# The playground is in the scene and its events flow: joints, collisions, the zone's count.
python3 - "$out/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
problems = [f"{k} is {r.get(k)}" for k, least in [("joints", 12), ("collision_events", 1), ("zone_entries", 1), ("sparks", 1)] if r.get(k, 0) < least]
if problems:
    sys.exit("smoke: the playground is missing or quiet: " + ", ".join(problems))
print(f"smoke: playground: {r['joints']} joints, {r['collision_events']} collision events, {r['zone_entries']} zone entries")
p = r.get("player", {})
if p.get("walked_m", 0) < 0.5 or p.get("aim_hits", 0) < 1:
    sys.exit(f"smoke: the player did not walk and aim on its own: {p}")
print(f"smoke: player: walked {p['walked_m']:.1f} m, {p['aim_hits']} frames aimed at something")
PY
echo "smoke: ok, screenshot at $out/screenshot.png"
