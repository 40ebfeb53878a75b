//! Results on stdout: aligned `key: value` lines for people, JSON with `--json`.

use std::fmt::Display;
use std::io::Write;

use serde::Serialize;

use crate::failure::Failure;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    /// Prints `value` as JSON, or as the lines `human` makes of it.
    pub(crate) fn emit<T: Serialize>(
        self,
        value: &T,
        human: impl FnOnce(&T) -> Fields,
    ) -> Result<(), Failure> {
        let text = if self.json {
            let mut text = serde_json::to_string_pretty(value)
                .map_err(|e| Failure::new(format!("cannot print the result as JSON: {e}")))?;
            text.push('\n');
            text
        } else {
            human(value).render()
        };
        write_stdout(&text)
    }
}

/// Writes to stdout; a reader that went away (`| head -1`) is not a failure, where
/// `print!` would panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// `key: value` lines with the values aligned, then optional free-text notes.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    rows: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

impl Fields {
    pub(crate) fn new() -> Self {
        Fields::default()
    }

    pub(crate) fn row(mut self, key: &'static str, value: impl Display) -> Self {
        self.rows.push((key, value.to_string()));
        self
    }

    pub(crate) fn row_if(self, key: &'static str, value: Option<impl Display>) -> Self {
        match value {
            Some(v) => self.row(key, v),
            None => self,
        }
    }

    /// A line printed after a blank line, below the fields.
    pub(crate) fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(text.into());
        self
    }

    pub(crate) fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.len() + 1)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.rows {
            out.push_str(&format!("{:<width$}  {value}\n", format!("{key}:")));
        }
        if !self.notes.is_empty() {
            if !self.rows.is_empty() {
                out.push('\n');
            }
            for note in &self.notes {
                out.push_str(note);
                out.push('\n');
            }
        }
        out
    }
}

/// `yes` / `no`.
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_line_up() {
        let text = Fields::new()
            .row("plan", 42)
            .row("balance", 100)
            .row_if("tx", None::<&str>)
            .note("next: order it")
            .render();
        assert_eq!(
            text, "plan:     42\nbalance:  100\n\nnext: order it\n",
            "{text}"
        );
    }
}
