//! A small Markdown renderer for chat messages: headings, bullet and numbered lists, `inline code`,
//! **bold**, *italic* and fenced code blocks with a copy button. Enough for model replies; anything else is
//! shown as the text it is. A fence left open (a reply still streaming) runs to the end as code.

use egui::text::LayoutJob;
use egui::{Color32, FontId, RichText, TextFormat, TextStyle, Ui};

#[derive(Debug, PartialEq)]
pub enum Block<'a> {
    Heading(usize, &'a str),
    /// A list item: its marker ("•", "1.") and text.
    Item(String, &'a str),
    Paragraph(&'a str),
    Code {
        lang: &'a str,
        code: String,
    },
    Blank,
}

pub fn parse(text: &str) -> Vec<Block<'_>> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            let mut code = Vec::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    break;
                }
                code.push(l);
            }
            blocks.push(Block::Code {
                lang: lang.trim(),
                code: code.join("\n"),
            });
        } else if trimmed.is_empty() {
            blocks.push(Block::Blank);
        } else if let Some((level, rest)) = heading(trimmed) {
            blocks.push(Block::Heading(level, rest));
        } else if let Some(rest) = trimmed.strip_prefix("- ").or_else(|| trimmed.strip_prefix("* ")) {
            blocks.push(Block::Item("•".into(), rest));
        } else if let Some((number, rest)) = numbered(trimmed) {
            blocks.push(Block::Item(format!("{number}."), rest));
        } else {
            blocks.push(Block::Paragraph(line));
        }
    }
    blocks
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    let rest = line[level..].strip_prefix(' ')?;
    (1..=6).contains(&level).then_some((level, rest))
}

fn numbered(line: &str) -> Option<(&str, &str)> {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    let rest = line[digits..].strip_prefix(". ")?;
    (digits > 0).then_some((&line[..digits], rest))
}

/// Inline spans: plain, `code`, **bold**, *italic*. Unclosed markers are kept as text.
#[derive(Debug, PartialEq)]
pub enum Span<'a> {
    Plain(&'a str),
    Code(&'a str),
    Bold(&'a str),
    Italic(&'a str),
}

pub fn spans(text: &str) -> Vec<Span<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut i = 0;
    while i < rest.len() {
        let tail = &rest[i..];
        let closed = |marker: &str| {
            let inner = tail.strip_prefix(marker)?;
            let end = inner.find(marker).filter(|&e| e > 0)?;
            Some((&inner[..end], 2 * marker.len() + end))
        };
        let found = if let Some((t, len)) = closed("`") {
            Some((Span::Code(t), len))
        } else if let Some((t, len)) = closed("**") {
            Some((Span::Bold(t), len))
        } else {
            closed("*").map(|(t, len)| (Span::Italic(t), len))
        };
        match found {
            Some((span, len)) => {
                if i > 0 {
                    out.push(Span::Plain(&rest[..i]));
                }
                out.push(span);
                rest = &rest[i + len..];
                i = 0;
            }
            None => i += tail.chars().next().map_or(1, char::len_utf8),
        }
    }
    if !rest.is_empty() {
        out.push(Span::Plain(rest));
    }
    out
}

/// Draws `text`; `id` keeps the copy buttons of different messages apart.
pub fn show(ui: &mut Ui, id: impl std::hash::Hash + std::fmt::Debug + Copy, text: &str) {
    for (n, block) in parse(text).into_iter().enumerate() {
        match block {
            Block::Heading(level, t) => {
                let size = match level {
                    1 => 1.5,
                    2 => 1.3,
                    _ => 1.15,
                };
                let body = ui.text_style_height(&TextStyle::Body);
                ui.label(RichText::new(t).strong().size(body * size));
            }
            Block::Item(marker, t) => {
                ui.horizontal_wrapped(|ui| {
                    ui.label(marker);
                    inline(ui, t);
                });
            }
            Block::Paragraph(t) => inline(ui, t),
            Block::Blank => ui.add_space(ui.spacing().item_spacing.y),
            Block::Code { lang, code } => code_block(ui, (id, n), lang, &code),
        }
    }
}

fn inline(ui: &mut Ui, text: &str) {
    let body = TextStyle::Body.resolve(ui.style());
    let mono = FontId::monospace(body.size);
    let color = ui.visuals().text_color();
    let code_bg = ui.visuals().code_bg_color;
    let mut job = LayoutJob::default();
    for span in spans(text) {
        let (t, format) = match span {
            Span::Plain(t) => (t, TextFormat::simple(body.clone(), color)),
            Span::Code(t) => (
                t,
                TextFormat {
                    background: code_bg,
                    ..TextFormat::simple(mono.clone(), color)
                },
            ),
            Span::Bold(t) => (t, TextFormat::simple(body.clone(), ui.visuals().strong_text_color())),
            Span::Italic(t) => (
                t,
                TextFormat {
                    italics: true,
                    ..TextFormat::simple(body.clone(), color)
                },
            ),
        };
        job.append(t, 0.0, format);
    }
    job.wrap.max_width = ui.available_width();
    ui.label(job);
}

fn code_block(ui: &mut Ui, id: impl std::hash::Hash + std::fmt::Debug, lang: &str, code: &str) {
    egui::Frame::group(ui.style())
        .fill(ui.visuals().extreme_bg_color)
        .show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.push_id(id, |ui| {
                ui.horizontal(|ui| {
                    ui.label(
                        RichText::new(if lang.is_empty() { "code" } else { lang })
                            .small()
                            .weak(),
                    );
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        if ui.small_button("Copy code").clicked() {
                            ui.ctx().copy_text(code.to_string());
                        }
                    });
                });
                ui.label(RichText::new(code).monospace().color(code_color(ui)));
            });
        });
}

fn code_color(ui: &Ui) -> Color32 {
    if ui.visuals().dark_mode {
        Color32::from_rgb(0xd6, 0xe2, 0xf0)
    } else {
        Color32::from_rgb(0x20, 0x30, 0x48)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_an_open_fence() {
        let b = parse("# Title\n- one\n2. two\ntext\n\n```rust\nfn x() {}\n```\n```\nstill streaming");
        assert_eq!(b[0], Block::Heading(1, "Title"));
        assert_eq!(b[1], Block::Item("•".into(), "one"));
        assert_eq!(b[2], Block::Item("2.".into(), "two"));
        assert_eq!(b[3], Block::Paragraph("text"));
        assert_eq!(b[4], Block::Blank);
        assert_eq!(
            b[5],
            Block::Code {
                lang: "rust",
                code: "fn x() {}".into()
            }
        );
        assert_eq!(
            b[6],
            Block::Code {
                lang: "",
                code: "still streaming".into()
            }
        );
        assert_eq!(parse("#hashtag"), vec![Block::Paragraph("#hashtag")]);
    }

    #[test]
    fn inline_spans_and_unclosed_markers() {
        assert_eq!(
            spans("a `b` **c** *d* e"),
            vec![
                Span::Plain("a "),
                Span::Code("b"),
                Span::Plain(" "),
                Span::Bold("c"),
                Span::Plain(" "),
                Span::Italic("d"),
                Span::Plain(" e")
            ]
        );
        assert_eq!(spans("2 * 3 and `x"), vec![Span::Plain("2 * 3 and `x")]);
        assert_eq!(spans("naïve **é**"), vec![Span::Plain("naïve "), Span::Bold("é")]);
    }
}
