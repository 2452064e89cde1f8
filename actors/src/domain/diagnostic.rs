//! Text a worker sends about an attempt (why it failed, what it made) is a
//! diagnostic, not the caller's input: it is never refused, it is made fit
//! to keep. Every attempt's outcome passes [`storable`] before it is
//! written, so no store refuses it (PostgreSQL refuses NUL in text) and no
//! worker fills a row or a log line with an unbounded message.

use crate::domain::job::{AttemptOutcome, Output};

/// Longest diagnostic kept, in characters; the rest is cut off.
pub const MAX_DIAGNOSTIC_CHARS: usize = 2_000;
/// Longest output URL or content type accepted from a worker.
const MAX_OUTPUT_FIELD_CHARS: usize = 2_048;

/// `text` without control characters (line breaks and tabs stay), each
/// replaced by U+FFFD so the reader sees something was there, cut to
/// [`MAX_DIAGNOSTIC_CHARS`].
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_DIAGNOSTIC_CHARS * 4));
    for (n, c) in text.trim().chars().enumerate() {
        if n == MAX_DIAGNOSTIC_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() && c != '\n' && c != '\t' {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        });
    }
    out
}

/// An output is a reference the user will follow, so it is not rewritten:
/// one with a control character, or too long, is refused instead.
fn output_fit(output: &Output) -> bool {
    [&output.url, &output.content_type].iter().all(|field| {
        !field.is_empty()
            && field.chars().count() <= MAX_OUTPUT_FIELD_CHARS
            && !field.chars().any(char::is_control)
    })
}

/// The outcome as it may be stored: messages cleaned; a success whose
/// outputs cannot be kept becomes a system failure retrying at
/// `retry_at` (the worker, not the user, was at fault).
pub fn storable(
    outcome: AttemptOutcome,
    retry_at: chrono::DateTime<chrono::Utc>,
) -> AttemptOutcome {
    match outcome {
        AttemptOutcome::Succeeded { outputs } | AttemptOutcome::Withheld { outputs }
            if !outputs.iter().all(output_fit) =>
        {
            AttemptOutcome::SystemFailure {
                message: "the worker reported outputs that cannot be kept \
                          (empty, too long, or with control characters)"
                    .into(),
                retry_at,
            }
        }
        outcome @ (AttemptOutcome::Succeeded { .. } | AttemptOutcome::Withheld { .. }) => outcome,
        AttemptOutcome::UserFailure { message } => AttemptOutcome::UserFailure {
            message: clean(&message),
        },
        AttemptOutcome::SystemFailure { message, retry_at } => AttemptOutcome::SystemFailure {
            message: clean(&message),
            retry_at,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced_and_line_breaks_kept() {
        assert_eq!(clean("a\u{0}b"), "a\u{fffd}b");
        assert_eq!(
            clean("\u{1b}[31mred\u{1b}[0m"),
            "\u{fffd}[31mred\u{fffd}[0m"
        );
        assert_eq!(clean("x\u{7f}\u{85}y"), "x\u{fffd}\u{fffd}y");
        assert_eq!(clean("line 1\n\tline 2"), "line 1\n\tline 2");
        assert_eq!(clean("  padded \n"), "padded");
        assert_eq!(clean("CUDA out of memory"), "CUDA out of memory");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_DIAGNOSTIC_CHARS + 50);
        let cut = clean(&long);
        assert_eq!(cut.chars().count(), MAX_DIAGNOSTIC_CHARS + 1);
        assert!(cut.ends_with('…'));
        let exact = "a".repeat(MAX_DIAGNOSTIC_CHARS);
        assert_eq!(clean(&exact), exact);
    }

    #[test]
    fn outcomes_are_made_storable() {
        let at = crate::clock::Clock::system().now();
        let failed = storable(
            AttemptOutcome::UserFailure {
                message: "bad\u{0}input".into(),
            },
            at,
        );
        assert_eq!(
            failed,
            AttemptOutcome::UserFailure {
                message: "bad\u{fffd}input".into()
            }
        );
        let output = |url: &str| Output::new(url, "image/png");
        let good = AttemptOutcome::Succeeded {
            outputs: vec![output("s3://bucket/a.png")],
        };
        assert_eq!(storable(good.clone(), at), good);
        for bad in ["s3://bucket/\u{0}.png", "", &"x".repeat(3000)] {
            let outcome = storable(
                AttemptOutcome::Succeeded {
                    outputs: vec![output("s3://ok.png"), output(bad)],
                },
                at,
            );
            assert!(
                matches!(outcome, AttemptOutcome::SystemFailure { retry_at, .. } if retry_at == at),
                "{bad:?}: {outcome:?}"
            );
        }
    }
}
