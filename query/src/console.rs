//! The SQL console (`tributary sql`) and one-shot query runs.
//!
//! The loop is split in two so it can be tested without a terminal:
//! [`Console`] turns input lines into output and an [`Action`], and
//! [`run_console`] only moves lines between rustyline and the console.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{BooleanArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rustyline::error::ReadlineError;

use crate::render::{Format, render};
use crate::session::{Session, parse};
use crate::{Error, Result};

/// The prompt for a new statement.
pub const PROMPT: &str = "tributary> ";
/// The prompt while a statement is still missing its closing `;`.
pub const CONTINUATION_PROMPT: &str = "      -> ";

const HELP: &str = "\
SQL statements end with ';' and may span several lines.
Unqualified names resolve in schema silver; the others are bronze and gold.

  \\d              list every table (schema.table)
  \\d <table>      describe a table's columns (table or schema.table)
  \\timing         toggle the timing line after each statement
  \\?              this help
  \\q              quit (or Ctrl-D); Ctrl-C clears the current input
";

/// What the caller should do after a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the next statement (shows [`PROMPT`]).
    Continue,
    /// The statement is incomplete: read another line (shows [`CONTINUATION_PROMPT`]).
    More,
    /// Leave the console.
    Exit,
}

/// The console's state: the session, the pending statement text, settings.
pub struct Console<W> {
    session: Session,
    out: W,
    buffer: String,
    timing: bool,
}

impl<W: Write> Console<W> {
    /// A console that writes results, messages and errors to `out`.
    pub fn new(session: Session, out: W) -> Self {
        Console {
            session,
            out,
            buffer: String::new(),
            timing: true,
        }
    }

    /// The prompt to show for the next line.
    pub fn prompt(&self) -> &'static str {
        if self.buffer.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        }
    }

    pub fn timing(&self) -> bool {
        self.timing
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn output(&self) -> &W {
        &self.out
    }

    pub fn output_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Drops a half-typed statement (Ctrl-C).
    pub fn cancel(&mut self) {
        self.buffer.clear();
    }

    /// Handles one input line. Query errors are printed as `ERROR: ...` and
    /// the console goes on; only `\q` or a broken output ends it.
    pub async fn handle_line(&mut self, line: &str) -> Action {
        match self.handle(line).await {
            Ok(action) => action,
            Err(Error::Io(e)) => {
                // Nobody can read the output any more (closed pipe).
                tracing::debug!(error = %e, "console output closed");
                Action::Exit
            }
            Err(e) => match writeln!(self.out, "ERROR: {}", e.report()) {
                Ok(()) => Action::Continue,
                Err(_) => Action::Exit,
            },
        }
    }

    async fn handle(&mut self, line: &str) -> Result<Action> {
        let trimmed = line.trim();
        if self.buffer.is_empty() {
            if trimmed.is_empty() {
                return Ok(Action::Continue);
            }
            if let Some(command) = trimmed.strip_prefix('\\') {
                return self.command(command).await;
            }
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        if !trimmed.ends_with(';') {
            return Ok(Action::More);
        }
        let text = std::mem::take(&mut self.buffer);
        self.execute(&text).await?;
        Ok(Action::Continue)
    }

    async fn execute(&mut self, text: &str) -> Result<()> {
        for statement in parse(text)? {
            let started = Instant::now();
            let (schema, batches) = self.session.run(statement).await?;
            render(&schema, &batches, Format::Table, &mut self.out)?;
            if self.timing {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                writeln!(
                    self.out,
                    "{rows} rows in {:.3} s",
                    started.elapsed().as_secs_f64()
                )?;
            }
        }
        Ok(())
    }

    async fn command(&mut self, command: &str) -> Result<Action> {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((name, arg)) => (name, arg.trim()),
            None => (command, ""),
        };
        match (name, arg) {
            ("q", _) => return Ok(Action::Exit),
            ("?", _) => write!(self.out, "{HELP}")?,
            ("timing", _) => {
                self.timing = !self.timing;
                writeln!(
                    self.out,
                    "Timing is {}.",
                    if self.timing { "on" } else { "off" }
                )?;
            }
            ("d", "") => self.list_tables().await?,
            ("d", table) => self.describe(table).await?,
            _ => writeln!(self.out, "ERROR: unknown command \\{name} (try \\?)")?,
        }
        Ok(Action::Continue)
    }

    async fn list_tables(&mut self) -> Result<()> {
        let tables = self.session.refresh().await?;
        if tables.is_empty() {
            writeln!(self.out, "No tables in the lake yet.")?;
            return Ok(());
        }
        let names: StringArray = tables
            .iter()
            .map(|(layer, name)| Some(format!("{layer}.{name}")))
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
            "table",
            DataType::Utf8,
            false,
        )]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(names)]).map_err(|source| {
                Error::Render {
                    format: "table",
                    source,
                }
            })?;
        render(&schema, &[batch], Format::Table, &mut self.out)
    }

    async fn describe(&mut self, table: &str) -> Result<()> {
        let (layer, name, provider) = self.session.resolve_table(table).await?;
        let fields = provider.schema();
        let column: StringArray = fields
            .fields()
            .iter()
            .map(|f| Some(f.name().clone()))
            .collect();
        let data_type: StringArray = fields
            .fields()
            .iter()
            .map(|f| Some(f.data_type().to_string()))
            .collect();
        let nullable: BooleanArray = fields
            .fields()
            .iter()
            .map(|f| Some(f.is_nullable()))
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("column", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("nullable", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(column), Arc::new(data_type), Arc::new(nullable)],
        )
        .map_err(|source| Error::Render {
            format: "table",
            source,
        })?;
        writeln!(self.out, "Table {layer}.{name}")?;
        render(&schema, &[batch], Format::Table, &mut self.out)
    }
}

/// Runs every `;`-separated statement in `query`, printing each result to
/// stdout in `format`; stops at the first failing statement.
pub async fn run_one_shot(session: &Session, query: &str, format: Format) -> Result<()> {
    let statements = parse(query)?;
    let many = statements.len() > 1;
    for (i, statement) in statements.into_iter().enumerate() {
        let (schema, batches) = session.run(statement).await?;
        let mut out = std::io::stdout().lock();
        if many && i > 0 && format == Format::Table {
            writeln!(out)?;
        }
        render(&schema, &batches, format, &mut out)?;
    }
    Ok(())
}

/// The interactive console on the terminal, with history kept in
/// `history_file` across sessions. Returns on `\q` or Ctrl-D.
pub async fn run_console(session: Session, history_file: PathBuf) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    match editor.load_history(&history_file) {
        Ok(()) => {}
        Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %history_file.display(), error = %e, "could not load console history")
        }
    }
    let mut console = Console::new(session, std::io::stdout());
    writeln!(
        console.output_mut(),
        "tributary SQL console. \\? for help, \\q to quit."
    )?;
    // The statement being typed, kept whole for one history entry.
    let mut entry = String::new();
    loop {
        let prompt = console.prompt();
        // rustyline blocks on the terminal; keep that off the async workers.
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(prompt);
            (editor, line)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        editor = returned;
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                console.cancel();
                entry.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if !entry.is_empty() {
            entry.push('\n');
        }
        entry.push_str(&line);
        let action = console.handle_line(&line).await;
        if action != Action::More {
            if !entry.trim().is_empty() {
                let _added = editor.add_history_entry(entry.as_str())?;
                save_history(&mut editor, &history_file);
            }
            entry.clear();
        }
        if action == Action::Exit {
            break;
        }
    }
    save_history(&mut editor, &history_file);
    Ok(())
}

/// Saves history after each statement, so a killed console keeps it; a
/// failure to save only costs history, so it is logged, not fatal.
fn save_history(editor: &mut rustyline::DefaultEditor, path: &std::path::Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        tracing::warn!(path = %parent.display(), error = %e, "could not create history folder");
        return;
    }
    if let Err(e) = editor.save_history(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not save console history");
    }
}
