//! `volt chat`: the desktop chat app (egui on eframe's wgpu renderer). `state` holds what the app does and
//! is driven by tests without a window; `view` draws it.

pub mod markdown;
pub mod saved;
pub mod state;
pub mod store;
pub mod view;

use std::time::Duration;

use volt_runtime::{bail, Result};

use crate::backends::{BackendChoice, Dtypes};
use crate::cli::Flags;
use state::{AppOptions, ChatApp};
use view::ViewState;

/// Repaints while a reply streams or a model loads: at most this often (tokens are taken in batches).
const REPAINT_EVERY: Duration = Duration::from_millis(33);

/// The app and its widgets' state: one frame is `frame`.
pub struct VoltApp {
    pub app: ChatApp,
    view: ViewState,
    applied_dark: Option<bool>,
}

impl VoltApp {
    pub fn new(options: AppOptions) -> VoltApp {
        VoltApp {
            app: ChatApp::new(options),
            view: ViewState::default(),
            applied_dark: None,
        }
    }

    /// Takes what the background threads sent, draws, and asks for the next frame while work runs.
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let busy = self.app.tick();
        if self.applied_dark != Some(self.app.settings.dark) {
            self.applied_dark = Some(self.app.settings.dark);
            ui.ctx().set_theme(if self.app.settings.dark {
                egui::Theme::Dark
            } else {
                egui::Theme::Light
            });
        }
        view::draw(&mut self.app, &mut self.view, ui);
        if busy {
            ui.ctx().request_repaint_after(REPAINT_EVERY);
        }
    }
}

impl eframe::App for VoltApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn on_exit(&mut self) {
        self.app.save_now();
    }
}

/// Whether a window can open: on Linux an X server must be named (the app is built for X11 only).
pub fn display_available() -> bool {
    !cfg!(target_os = "linux") || std::env::var_os("DISPLAY").is_some()
}

/// `volt chat [--model DIR] [--backend B] [--dtype D] [--kv-dtype K]`: opens the window.
pub fn run(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["model", "backend", "dtype", "kv-dtype"], &[])?;
    let model = flags.str("model").map(|m| crate::model_path(Some(m))).transpose()?;
    let backend = flags.str("backend").map(BackendChoice::parse).transpose()?;
    let dtypes = Dtypes::from_flags(&flags)?;
    let Some(data_dir) = store::data_dir() else {
        bail!("no folder for the conversations: set VOLT_DATA_DIR (or HOME)")
    };
    if !display_available() {
        bail!("no display to open the chat window on (DISPLAY is unset): use `volt chat --terminal`");
    }
    let options = AppOptions {
        data_dir,
        model,
        backend,
        dtypes,
    };
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Volt")
            .with_inner_size([1180.0, 760.0])
            .with_min_inner_size([640.0, 400.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native("Volt", native, Box::new(move |_cc| Ok(Box::new(VoltApp::new(options)))))
        .map_err(|e| volt_runtime::Error::msg(format!("cannot open the chat window: {e}")))
}
