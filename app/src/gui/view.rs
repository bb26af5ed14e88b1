//! Drawing the app: panels, messages, settings, the experts heatmap. Every action goes through
//! `ChatApp`'s methods; what is kept here is only what the widgets need between frames.

use egui::{Color32, Key, KeyboardShortcut, Modifiers, RichText, Sense, Ui};

use super::markdown;
use super::state::{mib, ChatApp, Finish, Role, LOAD_STAGES, SLOTS};
use crate::backends::BackendChoice;

#[derive(Default)]
pub struct ViewState {
    /// A user message being edited: its index and the new text.
    editing: Option<(usize, String)>,
    /// A conversation being renamed: its index and the new title.
    renaming: Option<(usize, String)>,
    confirm_delete: Option<usize>,
    show_settings: bool,
    /// The model folder typed in the picker, and its memory estimate (computed when the text changes).
    model_dir: String,
    estimate: Option<(String, String)>,
}

pub fn draw(app: &mut ChatApp, view: &mut ViewState, ui: &mut Ui) {
    if ui.input(|i| i.key_pressed(Key::Escape)) {
        app.stop();
    }
    top_bar(app, view, ui);
    egui::Panel::left("conversations")
        .resizable(true)
        .default_size(210.0)
        .show(ui, |ui| conversations(app, view, ui));
    if view.show_settings {
        egui::Panel::right("settings")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| settings(app, view, ui));
    }
    if app.settings.show_experts {
        egui::Panel::right("experts")
            .resizable(true)
            .default_size(330.0)
            .show(ui, |ui| experts(app, ui));
    }
    egui::Panel::bottom("input").show(ui, |ui| input(app, ui));
    egui::CentralPanel::default().show(ui, |ui| messages(app, view, ui));
}

fn top_bar(app: &mut ChatApp, view: &mut ViewState, ui: &mut Ui) {
    egui::Panel::top("top").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.strong("Volt");
            if let Some(m) = app.chat_model() {
                ui.label(m.name());
                ui.weak(m.describe.as_str());
            } else if let Some(e) = &app.load_error {
                ui.colored_label(ui.visuals().error_fg_color, "no model")
                    .on_hover_text(e.as_str());
            }
            if let Some(l) = &app.loading {
                let done = l.stages_started.saturating_sub(1) as f32 / LOAD_STAGES as f32;
                ui.label(format!("loading {}", l.dir.display()));
                ui.add(egui::ProgressBar::new(done).desired_width(180.0).text(format!(
                    "{} ({:.0}s)",
                    l.stage,
                    l.started.elapsed().as_secs_f32()
                )));
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let dark = app.settings.dark;
                if ui.button(if dark { "Light" } else { "Dark" }).clicked() {
                    app.set_dark(!dark);
                }
                let mut experts = app.settings.show_experts;
                if ui.toggle_value(&mut experts, "Experts").changed() {
                    app.show_experts(experts);
                }
                ui.toggle_value(&mut view.show_settings, "Settings");
                if let Some(kv) = app.kv_usage() {
                    let used = kv.used_bytes as f64;
                    let cap = kv.capacity_bytes.max(1) as f64;
                    ui.add(
                        egui::ProgressBar::new((used / cap) as f32)
                            .desired_width(170.0)
                            .text(format!("KV {} / {}", mib(used), mib(cap))),
                    )
                    .on_hover_text(format!(
                        "{} tokens cached across the engine's conversation slots",
                        kv.cached_tokens
                    ));
                }
            });
        });
    });
}

fn conversations(app: &mut ChatApp, view: &mut ViewState, ui: &mut Ui) {
    if ui.button("New chat").clicked() {
        app.new_conversation();
        view.editing = None;
    }
    ui.separator();
    let mut action = None;
    egui::ScrollArea::vertical()
        .id_salt("conversation list")
        .show(ui, |ui| {
            for (i, c) in app.conversations.iter().enumerate() {
                let selected = i == app.selected;
                if let Some((index, title)) = &mut view.renaming {
                    if *index == i {
                        let r = ui.text_edit_singleline(title);
                        let mut save = r.lost_focus() && ui.input(|inp| inp.key_pressed(Key::Enter));
                        ui.horizontal(|ui| {
                            save |= ui.small_button("Save name").clicked();
                            if ui.small_button("Cancel").clicked() {
                                action = Some(ListAction::CancelRename);
                            }
                        });
                        if save {
                            action = Some(ListAction::Rename(i, title.clone()));
                        }
                        continue;
                    }
                }
                if ui.selectable_label(selected, c.title.as_str()).clicked() && !selected {
                    action = Some(ListAction::Select(i));
                }
                if selected {
                    ui.horizontal(|ui| {
                        if view.confirm_delete == Some(i) {
                            if ui.small_button("Yes, delete").clicked() {
                                action = Some(ListAction::Delete(i));
                            }
                            if ui.small_button("Keep").clicked() {
                                view.confirm_delete = None;
                            }
                        } else {
                            if ui.small_button("Rename").clicked() {
                                view.renaming = Some((i, c.title.clone()));
                            }
                            if ui.small_button("Delete").clicked() {
                                view.confirm_delete = Some(i);
                            }
                        }
                    });
                }
            }
        });
    match action {
        Some(ListAction::Select(i)) => {
            app.select(i);
            view.editing = None;
            view.confirm_delete = None;
            view.renaming = None;
        }
        Some(ListAction::Rename(i, title)) => {
            app.rename(i, &title);
            view.renaming = None;
        }
        Some(ListAction::CancelRename) => view.renaming = None,
        Some(ListAction::Delete(i)) => {
            app.delete(i);
            view.confirm_delete = None;
            view.editing = None;
        }
        None => {}
    }
}

enum ListAction {
    Select(usize),
    Rename(usize, String),
    CancelRename,
    Delete(usize),
}

fn settings(app: &mut ChatApp, view: &mut ViewState, ui: &mut Ui) {
    egui::ScrollArea::vertical().id_salt("settings scroll").show(ui, |ui| {
        ui.heading("This conversation");
        ui.label("System prompt");
        let mut system = app.current().system_prompt.clone();
        if ui
            .add(egui::TextEdit::multiline(&mut system).desired_rows(3).hint_text("none"))
            .changed()
        {
            app.current_mut().system_prompt = system;
        }
        let mut sampling = app.current().sampling.clone();
        egui::Grid::new("sampling").num_columns(2).show(ui, |ui| {
            ui.label("Temperature");
            ui.add(
                egui::DragValue::new(&mut sampling.temperature)
                    .range(0.0..=2.0)
                    .speed(0.01),
            );
            ui.end_row();
            ui.label("Top-p");
            ui.add(egui::DragValue::new(&mut sampling.top_p).range(0.0..=1.0).speed(0.01));
            ui.end_row();
            ui.label("Top-k (0: off)");
            ui.add(egui::DragValue::new(&mut sampling.top_k).range(0..=1000));
            ui.end_row();
            ui.label("Max tokens");
            ui.add(egui::DragValue::new(&mut sampling.max_tokens).range(1..=32768));
            ui.end_row();
            ui.label("Seed");
            ui.add(egui::DragValue::new(&mut sampling.seed));
            ui.end_row();
        });
        if sampling != app.current().sampling {
            app.current_mut().sampling = sampling;
        }
        if ui.button("Use for new chats").clicked() {
            let (system, sampling) = (app.current().system_prompt.clone(), app.current().sampling.clone());
            let s = app.settings_mut();
            s.system_prompt = system;
            s.sampling = sampling;
        }
        ui.separator();
        ui.heading("Model");
        ui.label("Hugging Face model folder or .gguf file");
        if view.model_dir.is_empty() {
            if let Some(m) = app.chat_model() {
                view.model_dir = m.dir.display().to_string();
            }
        }
        ui.text_edit_singleline(&mut view.model_dir);
        let mut backend = app.settings.backend;
        egui::ComboBox::from_label("Backend")
            .selected_text(backend.name())
            .show_ui(ui, |ui| {
                for b in BackendChoice::ALL {
                    ui.selectable_value(&mut backend, b, b.name());
                }
            });
        if backend != app.settings.backend {
            app.settings_mut().backend = backend;
            view.estimate = None;
        }
        let key = format!("{}|{}", view.model_dir.trim(), app.settings.backend.name());
        if view.estimate.as_ref().is_none_or(|(k, _)| *k != key) {
            let dir = std::path::Path::new(view.model_dir.trim());
            view.estimate = Some((key, memory_estimate(dir, app.settings.backend, app)));
        }
        if let Some((_, text)) = &view.estimate {
            ui.label(RichText::new(text).small());
        }
        if ui
            .add_enabled(app.loading.is_none(), egui::Button::new("Load model"))
            .clicked()
        {
            app.load_model(view.model_dir.trim().into());
        }
        if let Some(m) = app.chat_model() {
            ui.label(RichText::new(format!("in use: {}", m.describe)).small());
        }
        ui.label(
            RichText::new(format!("conversations are saved in {}", app.store.dir().display()))
                .small()
                .weak(),
        );
    });
}

fn experts(app: &mut ChatApp, ui: &mut Ui) {
    ui.heading("Experts");
    let tokens = app.experts.tokens();
    if app.experts.layers.is_empty() {
        ui.label("Send a message: each MoE layer's routing of the reply's tokens appears here.");
        return;
    }
    ui.label(format!(
        "f_i: share of the {tokens} tokens of this reply (prompt and generated) whose top expert is i"
    ));
    let cell = egui::vec2(14.0, 14.0);
    let accent = if ui.visuals().dark_mode {
        Color32::from_rgb(0xff, 0xa0, 0x30)
    } else {
        Color32::from_rgb(0xc0, 0x30, 0x10)
    };
    let empty = ui.visuals().extreme_bg_color;
    egui::Grid::new("heatmap")
        .num_columns(3)
        .spacing([6.0, 2.0])
        .show(ui, |ui| {
            ui.weak("layer");
            ui.weak("experts");
            ui.weak("per token");
            ui.end_row();
            for (layer, stats) in &app.experts.layers {
                ui.monospace(format!("{layer:>2}"));
                let top = stats.f.iter().cloned().fold(0.0, f64::max).max(1e-9);
                ui.horizontal(|ui| {
                    ui.spacing_mut().item_spacing.x = 1.0;
                    for (i, &f) in stats.f.iter().enumerate() {
                        let (rect, response) = ui.allocate_exact_size(cell, Sense::hover());
                        ui.painter()
                            .rect_filled(rect, 2.0, empty.lerp_to_gamma(accent, (f / top) as f32));
                        response.on_hover_text(format!(
                            "layer {layer}, expert {i}: f = {f:.3}, activated for {:.0}% of tokens",
                            stats.load[i] * 100.0
                        ));
                    }
                });
                let counted: usize = stats.experts_per_token.iter().sum();
                let mean = stats
                    .experts_per_token
                    .iter()
                    .enumerate()
                    .map(|(n, c)| n * c)
                    .sum::<usize>() as f64
                    / counted.max(1) as f64;
                ui.monospace(format!("{mean:.2}"));
                ui.end_row();
            }
        });
    if let Some((_, first)) = app.experts.layers.first() {
        let spread: Vec<String> = first
            .experts_per_token
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(n, c)| format!("{n}: {c}"))
            .collect();
        ui.label(
            RichText::new(format!(
                "experts per token (tokens), first MoE layer: {}",
                spread.join(", ")
            ))
            .small(),
        );
    }
}

fn input(app: &mut ChatApp, ui: &mut Ui) {
    ui.add_space(4.0);
    if !app.notices.is_empty() {
        for n in &app.notices {
            ui.colored_label(ui.visuals().error_fg_color, n);
        }
        if ui.small_button("Dismiss").clicked() {
            app.notices.clear();
        }
    }
    let ready = app.chat_model().is_some();
    ui.horizontal(|ui| {
        let mut draft = app.current().draft.clone();
        let edit = egui::TextEdit::multiline(&mut draft)
            .id_salt("draft")
            .hint_text("Message (Enter sends, Shift+Enter adds a line, Esc stops)")
            .desired_rows(2)
            .desired_width(ui.available_width() - 80.0)
            .return_key(KeyboardShortcut::new(Modifiers::SHIFT, Key::Enter));
        let response = ui.add(edit);
        let enter = response.has_focus() && ui.input(|i| i.key_pressed(Key::Enter) && i.modifiers.is_none());
        if draft != app.current().draft {
            app.current_mut().draft = draft;
        }
        if app.generating_here() {
            if ui.button("Stop").clicked() {
                app.stop();
            }
        } else {
            let can_send = ready && !app.is_generating() && !app.current().draft.trim().is_empty();
            let send = ui.add_enabled(can_send, egui::Button::new("Send"));
            if send.clicked() || (enter && can_send) {
                app.send();
                response.request_focus();
            }
        }
    });
    ui.add_space(4.0);
}

fn messages(app: &mut ChatApp, view: &mut ViewState, ui: &mut Ui) {
    if app.current().messages.is_empty() {
        ui.centered_and_justified(|ui| {
            ui.weak(if app.chat_model().is_some() {
                "Type a message below. Enter sends, Shift+Enter adds a line."
            } else if app.loading.is_some() {
                "Loading the model..."
            } else {
                "No model: open one in Settings."
            });
        });
        return;
    }
    let streaming = app.generation.as_ref().filter(|g| g.conversation == app.current().id);
    let streaming_at = streaming.map(|g| (g.message, g.tokens, g.tokens_per_s()));
    let (can_regenerate, can_continue) = (app.can_regenerate(), app.can_continue());
    let busy = app.is_generating();
    let id = app.current().id.clone();
    let last = app.current().messages.len() - 1;
    let mut action = None;
    egui::ScrollArea::vertical()
        .id_salt(("messages", &id))
        .stick_to_bottom(true)
        .auto_shrink(false)
        .show(ui, |ui| {
            for (i, m) in app.current().messages.iter().enumerate() {
                ui.add_space(6.0);
                ui.strong(match m.role {
                    Role::User => "You",
                    Role::Assistant => "Volt",
                });
                if let Some((index, text)) = &mut view.editing {
                    if *index == i {
                        ui.add(egui::TextEdit::multiline(text).desired_width(f32::INFINITY));
                        ui.horizontal(|ui| {
                            if ui.add_enabled(!busy, egui::Button::new("Resubmit")).clicked() {
                                action = Some(Action::Resubmit(i, text.clone()));
                            }
                            if ui.button("Cancel").clicked() {
                                action = Some(Action::CancelEdit);
                            }
                        });
                        continue;
                    }
                }
                markdown::show(ui, (&id, i), &m.content);
                ui.horizontal_wrapped(|ui| {
                    let small = |t: String| RichText::new(t).small().weak();
                    match m.role {
                        Role::User => {
                            if ui.add_enabled(!busy, egui::Button::new("Edit").small()).clicked() {
                                action = Some(Action::Edit(i, m.content.clone()));
                            }
                        }
                        Role::Assistant => {
                            if ui.small_button("Copy").clicked() {
                                ui.ctx().copy_text(m.content.clone());
                            }
                            if i == last && can_regenerate && ui.small_button("Regenerate").clicked() {
                                action = Some(Action::Regenerate);
                            }
                            if i == last && can_continue && ui.small_button("Continue").clicked() {
                                action = Some(Action::Continue);
                            }
                        }
                    }
                    match (streaming_at, &m.reply) {
                        (Some((at, tokens, tps)), _) if at == i => {
                            ui.label(small(format!("generating: {tokens} tokens, {tps:.1} tok/s")));
                        }
                        (_, Some(r)) => {
                            let end = match &r.finish {
                                Finish::Stop => "finished".to_string(),
                                Finish::Length => "max tokens reached".to_string(),
                                Finish::Stopped => "stopped".to_string(),
                                Finish::Error(e) => format!("failed: {e}"),
                            };
                            ui.label(small(format!(
                                "{} tokens, {:.1} tok/s, {} of {} prompt tokens from the cache, {end}",
                                r.tokens, r.tokens_per_s, r.cached_tokens, r.prompt_tokens
                            )));
                        }
                        _ => {}
                    }
                });
            }
        });
    match action {
        Some(Action::Edit(i, text)) => view.editing = Some((i, text)),
        Some(Action::CancelEdit) => view.editing = None,
        Some(Action::Resubmit(i, text)) => {
            view.editing = None;
            app.resubmit_edit(i, text);
        }
        Some(Action::Regenerate) => app.regenerate(),
        Some(Action::Continue) => app.continue_reply(),
        None => {}
    }
}

enum Action {
    Edit(usize, String),
    CancelEdit,
    Resubmit(usize, String),
    Regenerate,
    Continue,
}

/// What the model at `dir` (a folder or a GGUF file) takes on `backend`, from its config and weights' header.
fn memory_estimate(dir: &std::path::Path, backend: BackendChoice, app: &ChatApp) -> String {
    let kind = backend.resolve();
    match kind.memory_estimate(dir, app.dtypes(), SLOTS) {
        Ok(m) => format!(
            "about {}: weights {} ({} on {}) + KV cache {} ({SLOTS} conversations of {} tokens, {})",
            mib((m.weight_bytes + m.kv_bytes) as f64),
            mib(m.weight_bytes as f64),
            m.dtype.name(),
            kind.name(),
            mib(m.kv_bytes as f64),
            m.context,
            m.kv_dtype.name()
        ),
        Err(e) => e.to_string(),
    }
}
