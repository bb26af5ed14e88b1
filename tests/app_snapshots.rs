//! The app rendered by wgpu (lavapipe in CI) against the images in app/tests/snapshots/: an empty chat, a
//! conversation with the shipped model, and the experts panel. `UPDATE_SNAPSHOTS=1` rewrites them. Without
//! a wgpu adapter the test prints SKIP.

#[path = "app_common.rs"]
mod app_common;

use app_common::{open_app, type_into_input, wait_until, wait_until_ready};
use egui::Key;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, HarnessBuilder, SnapshotResults};
use volt_app::gui::VoltApp;

fn wgpu(builder: HarnessBuilder<VoltApp>) -> HarnessBuilder<VoltApp> {
    builder.wgpu()
}

/// Greedy replies are the same on every run; their timings are not, so they are fixed for the images.
fn steady_timings(h: &mut Harness<'_, VoltApp>) {
    for c in &mut h.state_mut().app.conversations {
        for m in &mut c.messages {
            if let Some(r) = &mut m.reply {
                r.tokens_per_s = 100.0;
            }
        }
    }
    h.run_steps(3);
}

#[test]
fn the_app_renders_as_in_the_snapshots() {
    if volt_wgpu::adapters().is_empty() {
        println!("SKIP: no wgpu adapter to render with (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut h = open_app(data.path(), Some(wgpu));
    wait_until_ready(&mut h);
    h.run_steps(3);
    let mut results = SnapshotResults::new();
    results.add(h.try_snapshot("empty_chat"));

    {
        let c = h.state_mut().app.current_mut();
        c.sampling.temperature = 0.0;
        c.sampling.max_tokens = 40;
    }
    type_into_input(&mut h, "Good morning! How is your sister?");
    h.key_press(Key::Enter);
    h.step();
    wait_until(&mut h, "the reply", |app| !app.is_generating());
    steady_timings(&mut h);
    results.add(h.try_snapshot("conversation"));

    h.get_by_label("Experts").click();
    h.step();
    h.state_mut().app.current_mut().sampling.max_tokens = 24;
    type_into_input(&mut h, "Tell me about Mr. Bingley.");
    h.key_press(Key::Enter);
    h.step();
    wait_until(&mut h, "the second reply", |app| !app.is_generating());
    steady_timings(&mut h);
    assert!(!h.state().app.experts.layers.is_empty(), "the routing trace arrived");
    results.add(h.try_snapshot("experts_panel"));
}
