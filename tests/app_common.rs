#![allow(dead_code)] // each app test file uses its own subset
//! What the app tests share: opening the app on a data folder and the shipped model, and waiting on it.

use std::path::Path;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use volt_app::backends::{BackendChoice, BackendKind};
use volt_app::gui::state::{AppOptions, ChatApp};
use volt_app::gui::VoltApp;

/// Longest a test waits for the model or a reply (the CPU backend in a debug-ish test build).
const PATIENCE: Duration = Duration::from_secs(120);

pub fn open_app(
    data: &Path,
    renderer: Option<fn(egui_kittest::HarnessBuilder<VoltApp>) -> egui_kittest::HarnessBuilder<VoltApp>>,
) -> Harness<'static, VoltApp> {
    let options = AppOptions {
        data_dir: data.to_path_buf(),
        model: Some(volt_app::model_path(None).unwrap()),
        backend: Some(BackendChoice::Kind(BackendKind::Cpu)),
        dtypes: Default::default(),
    };
    let mut builder = Harness::builder().with_size([1100.0, 700.0]).allow_missing_glyphs();
    if let Some(setup) = renderer {
        builder = setup(builder);
    }
    builder.build_ui_state(|ui, app: &mut VoltApp| app.frame(ui), VoltApp::new(options))
}

/// Runs frames until `done` holds, sleeping a little between them as a window would.
pub fn wait_until(h: &mut Harness<'_, VoltApp>, what: &str, mut done: impl FnMut(&ChatApp) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if done(&h.state().app) {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn wait_until_ready(h: &mut Harness<'_, VoltApp>) {
    wait_until(h, "the model", |app| app.loading.is_none());
    if let Some(e) = &h.state().app.load_error {
        panic!("the model did not load: {e}");
    }
}

/// Types into the message box (the app's only multi-line input while no message is edited).
pub fn type_into_input(h: &mut Harness<'_, VoltApp>, text: &str) {
    let input = h.get_by_role(Role::MultilineTextInput);
    input.focus();
    h.step();
    h.get_by_role(Role::MultilineTextInput).type_text(text);
    h.step();
}
