//! The desktop app driven headless through egui_kittest, on the shipped model and the CPU backend: typing,
//! sending, a reply streaming in, stop, continue, regenerate, edit, a second turn reusing the KV, and the
//! conversations on disk (a restart finds them, a damaged file is set aside, delete removes the file).

#[path = "app_common.rs"]
mod app_common;

use app_common::{open_app, type_into_input, wait_until, wait_until_ready};
use egui::accesskit::Role;
use egui::{Key, Modifiers};
use egui_kittest::kittest::Queryable;
use volt_app::gui::state::{Finish, Role as MessageRole};

#[test]
fn a_reply_streams_stops_continues_regenerates_and_the_next_turn_reuses_the_kv() {
    let data = tempfile::tempdir().unwrap();
    let mut h = open_app(data.path(), None);
    wait_until_ready(&mut h);
    {
        let c = h.state_mut().app.current_mut();
        c.sampling.max_tokens = 400;
        c.sampling.temperature = 0.0;
    }

    // Shift+Enter adds a line and sends nothing.
    type_into_input(&mut h, "Good morning");
    h.key_press_modifiers(Modifiers::SHIFT, Key::Enter);
    h.run_steps(2);
    type_into_input(&mut h, "Mr. Darcy!");
    h.run_steps(2);
    assert_eq!(h.state().app.current().draft, "Good morning\nMr. Darcy!");
    assert!(h.state().app.current().messages.is_empty());

    // Enter sends; the reply streams in over several frames.
    h.key_press(Key::Enter);
    h.step();
    assert_eq!(h.state().app.current().draft, "", "the input was cleared");
    assert_eq!(h.state().app.current().messages[0].content, "Good morning\nMr. Darcy!");
    let mut lengths = Vec::new();
    wait_until(&mut h, "two streamed updates", |app| {
        let len = app.current().messages.get(1).map_or(0, |m| m.content.len());
        if app.is_generating() && len > 0 && lengths.last() != Some(&len) {
            lengths.push(len);
        }
        lengths.len() >= 2 || !app.is_generating()
    });
    assert!(lengths.len() >= 2, "the reply arrived in one piece: {lengths:?}");
    assert!(
        h.state().app.is_generating(),
        "the reply ended before it could be stopped"
    );

    // Esc stops mid-stream; what came stays, and Continue goes on from it.
    h.key_press(Key::Escape);
    h.step();
    let stopped = h.state().app.current().messages[1].clone();
    assert!(!h.state().app.is_generating());
    assert_eq!(stopped.reply.as_ref().unwrap().finish, Finish::Stopped);
    assert!(!stopped.content.is_empty());
    h.get_by_label("Continue").click();
    h.step();
    assert!(h.state().app.is_generating());
    wait_until(&mut h, "the continued reply", |app| !app.is_generating());
    let continued = h.state().app.current().messages[1].clone();
    let info = continued.reply.as_ref().unwrap();
    assert!(
        continued.content.len() > stopped.content.trim_end().len(),
        "continue added nothing"
    );
    assert!(continued.content.starts_with(stopped.content.trim_end()));
    assert!(
        info.cached_tokens > 0,
        "continuing prefilled the whole prompt again: {info:?}"
    );
    assert_eq!(h.state().app.current().messages.len(), 2);

    // Regenerate replaces the reply, with another seed.
    h.state_mut().app.current_mut().sampling.max_tokens = 6;
    h.get_by_label("Regenerate").click();
    h.step();
    wait_until(&mut h, "the regenerated reply", |app| !app.is_generating());
    let messages = &h.state().app.current().messages;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].role, MessageRole::Assistant);
    assert!(messages[1].reply.as_ref().unwrap().tokens <= 6);
    assert_eq!(h.state().app.current().replies, 3);

    // A second turn, sent with the button: the engine continues from the first turn's KV.
    type_into_input(&mut h, "How is your sister?");
    h.run_steps(2);
    h.get_by_label("Send").click();
    h.step();
    wait_until(&mut h, "the second turn", |app| !app.is_generating());
    let c = h.state().app.current();
    assert_eq!(c.messages.len(), 4);
    let second = c.messages[3].reply.as_ref().unwrap();
    assert!(
        second.finish == Finish::Stop || second.finish == Finish::Length,
        "{second:?}"
    );
    let prefilled = second.prompt_tokens - second.cached_tokens;
    assert!(
        second.cached_tokens > prefilled,
        "the second turn prefilled {prefilled} of {} prompt tokens",
        second.prompt_tokens
    );
    println!(
        "second turn: {} of {} prompt tokens from the cache; reply {} tokens at {:.0} tok/s",
        second.cached_tokens, second.prompt_tokens, second.tokens, second.tokens_per_s
    );
    // The reply's statistics are shown under it.
    assert!(h
        .query_all_by_label_contains("prompt tokens from the cache")
        .next()
        .is_some());
}

#[test]
fn conversations_survive_a_restart_and_a_damaged_file_is_set_aside() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut h = open_app(data.path(), None);
        wait_until_ready(&mut h);
        h.state_mut().app.current_mut().sampling.max_tokens = 3;
        type_into_input(&mut h, "Pride");
        h.run_steps(2);
        h.key_press(Key::Enter);
        h.step();
        wait_until(&mut h, "the reply", |app| !app.is_generating());
        h.get_by_label("New chat").click();
        h.step();
        type_into_input(&mut h, "words not sent yet");
        h.run_steps(2);
        assert_eq!(h.state().app.conversations.len(), 2);
        // Light mode, kept across the restart.
        h.get_by_label("Light").click();
        h.run_steps(2);
        assert_eq!(h.ctx.theme(), egui::Theme::Light);
    }
    // Something else wrote garbage into the folder.
    let folder = data.path().join("conversations");
    std::fs::write(folder.join("broken.json"), "{ not json").unwrap();

    let mut h = open_app(data.path(), None);
    h.run_steps(2);
    let app = &h.state().app;
    assert_eq!(app.conversations.len(), 2, "both conversations reloaded");
    assert_eq!(app.current().draft, "words not sent yet", "the unsent draft was kept");
    assert!(!app.settings.dark);
    assert!(h.query_by_label("Dark").is_some(), "the theme button offers dark mode");
    assert!(
        app.notices.iter().any(|n| n.contains("broken.json is damaged")),
        "{:?}",
        app.notices
    );
    assert!(folder.join("broken.json.corrupt").exists() && !folder.join("broken.json").exists());
    // The notice is on screen.
    assert!(h.query_all_by_label_contains("broken.json is damaged").next().is_some());

    // Switch to the first conversation: its messages show.
    h.get_by_role_and_label(Role::Button, "Pride").click();
    h.run_steps(2);
    assert_eq!(h.state().app.current().messages[0].content, "Pride");
    assert_eq!(h.state().app.current().messages.len(), 2);
    assert!(
        h.query_all_by_label("Pride").count() >= 2,
        "the title and the message show"
    );

    // Rename it.
    h.get_by_label("Rename").click();
    h.run_steps(2);
    let field = h.get_by_role(Role::TextInput);
    field.focus();
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_role(Role::TextInput).type_text("Austen");
    h.step();
    h.get_by_label("Save name").click();
    h.run_steps(2);
    assert_eq!(h.state().app.current().title, "Austen");

    // Editing the question keeps the old exchange in a copy and answers the new one.
    wait_until_ready(&mut h);
    h.state_mut().app.current_mut().sampling.max_tokens = 3;
    h.get_by_label("Edit").click();
    h.run_steps(2);
    // Two multi-line inputs now: the message editor is the one holding the message.
    let editor = || |n: &egui_kittest::Node<'_>| n.value().is_some_and(|v| v.contains("Pride"));
    h.query_all_by_role(Role::MultilineTextInput)
        .find(editor())
        .expect("the message editor")
        .focus();
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.query_all_by_role(Role::MultilineTextInput)
        .find(editor())
        .unwrap()
        .type_text("Pride and Prejudice");
    h.step();
    h.get_by_label("Resubmit").click();
    h.run_steps(2);
    wait_until(&mut h, "the reply to the edit", |app| !app.is_generating());
    let app = &h.state().app;
    assert_eq!(app.current().messages[0].content, "Pride and Prejudice");
    assert!(app
        .conversations
        .iter()
        .any(|c| c.title == "Austen (before edit)" && c.messages[0].content == "Pride"));
    assert_eq!(app.conversations.len(), 3);

    // Delete asks first, then removes the file.
    let id = h.state().app.current().id.clone();
    h.get_by_label("Delete").click();
    h.run_steps(2);
    h.get_by_label("Yes, delete").click();
    h.run_steps(2);
    assert_eq!(h.state().app.conversations.len(), 2);

    // The model picker estimates the memory before loading; a folder that is no model is a one-line
    // notice, and the loaded model goes on serving.
    h.get_by_label("Settings").click();
    h.run_steps(2);
    assert!(
        h.query_all_by_label_contains("KV cache").next().is_some(),
        "no memory estimate shown"
    );
    h.get_by_role(Role::TextInput).focus();
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_role(Role::TextInput).type_text("/nonexistent/model");
    h.run_steps(2);
    h.get_by_label("Load model").click();
    h.run_steps(2);
    wait_until(&mut h, "the failed load", |app| app.loading.is_none());
    let app = &h.state().app;
    assert!(
        app.notices
            .iter()
            .any(|n| n.starts_with("could not load /nonexistent/model") && !n.contains('\n')),
        "{:?}",
        app.notices
    );
    assert!(app.chat_model().is_some(), "the old model was dropped");
    drop(h);
    assert!(!folder.join(format!("{id}.json")).exists());
    assert_eq!(
        std::fs::read_dir(&folder)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
            .count(),
        2
    );
}
