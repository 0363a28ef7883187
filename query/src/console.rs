//! The SQL console (`tributary sql`) and one-shot query runs.
//!
//! The loop is split in two so it can be tested without a terminal:
//! [`Console`] turns input lines into output and an [`Action`], and
//! [`run_console`] only moves lines between rustyline and the console.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::{BooleanArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;

use crate::chart;
use crate::render::{Format, render};
use crate::session::{QueryResult, Session, parse};
use crate::{Error, Result};

/// The prompt for a new statement.
pub const PROMPT: &str = "tributary> ";
/// The prompt while a statement is still missing its closing `;`.
pub const CONTINUATION_PROMPT: &str = "      -> ";

const HELP: &str = "\
SQL statements end with ';' and may span several lines.
Unqualified names resolve in schema silver; the others are bronze and gold.

Earlier versions: table_version('silver.orders', 3), table_at('silver.orders', '2026-11-26T10:00:00Z').
EXPLAIN <query> shows the plan; EXPLAIN ANALYZE <query> runs it and shows timings.

  \\d                  list every table (schema.table)
  \\d <table>          describe a table's columns (table or schema.table)
  \\format <f>         results as table, csv or json
  \\o <file>           write results to a file (format by extension: .csv, .json, .parquet)
  \\o                  results to the terminal again
  \\chart [bar|line]   chart the last result (two columns: label, number)
  \\timing             toggle the timing line after each statement
  \\?                  this help
  \\q                  quit (or Ctrl-D); Ctrl-C clears the current input
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
    format: Format,
    /// `\\o <file>`: where results go instead of `out`.
    file: Option<PathBuf>,
    /// The last result, for `\\chart`.
    last: Option<QueryResult>,
    /// Table and column names for tab completion, shared with the editor.
    names: Arc<RwLock<Vec<String>>>,
    /// The statement text being run, for the caret under an error.
    failed_text: String,
}

impl<W: Write> Console<W> {
    /// A console that writes results, messages and errors to `out`.
    pub fn new(session: Session, out: W) -> Self {
        Console {
            session,
            out,
            buffer: String::new(),
            timing: true,
            format: Format::Table,
            file: None,
            last: None,
            names: Arc::default(),
            failed_text: String::new(),
        }
    }

    /// The names tab completion offers; refreshed by [`Console::refresh_names`].
    pub fn names(&self) -> Arc<RwLock<Vec<String>>> {
        self.names.clone()
    }

    /// Re-reads table and column names for completion. A table that cannot
    /// be opened only loses its columns from completion.
    pub async fn refresh_names(&self) -> Result<()> {
        let mut names = Vec::new();
        for (layer, table) in self.session.refresh().await? {
            names.push(format!("{layer}.{table}"));
            names.push(table.clone());
            if let Ok((_, _, provider)) = self
                .session
                .resolve_table(&format!("{layer}.{table}"))
                .await
            {
                names.extend(provider.schema().fields().iter().map(|f| f.name().clone()));
            }
        }
        names.sort();
        names.dedup();
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
        Ok(())
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
            Err(e) => match self.report_error(&e) {
                Ok(()) => Action::Continue,
                Err(_) => Action::Exit,
            },
        }
    }

    /// `ERROR: ...`, and when DataFusion knows where, the line of the
    /// statement with a caret under the place.
    fn report_error(&mut self, error: &Error) -> std::io::Result<()> {
        writeln!(self.out, "ERROR: {}", error.report())?;
        let statement = std::mem::take(&mut self.failed_text);
        if let Some((line, column)) = error.position_in(&statement)
            && let Some(text) = statement.lines().nth(line.saturating_sub(1))
            && column >= 1
        {
            let prefix = format!("LINE {line}: ");
            writeln!(self.out, "{prefix}{text}")?;
            let pad: String = text
                .chars()
                .take(column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(self.out, "{}{pad}^", " ".repeat(prefix.len()))?;
        }
        Ok(())
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
        self.failed_text.clone_from(&text);
        self.execute(&text).await?;
        self.failed_text.clear();
        Ok(Action::Continue)
    }

    async fn execute(&mut self, text: &str) -> Result<()> {
        for statement in parse(text)? {
            let started = Instant::now();
            let (schema, batches) = self.session.run(statement).await?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            match &self.file {
                Some(path) => {
                    let format = Format::from_extension(path).unwrap_or(self.format);
                    write_file(path, &schema, &batches, format)?;
                    writeln!(
                        self.out,
                        "wrote {rows} rows to {} ({format})",
                        path.display()
                    )?;
                }
                None => render(&schema, &batches, self.format, &mut self.out)?,
            }
            if self.timing {
                let noun = if rows == 1 { "row" } else { "rows" };
                writeln!(
                    self.out,
                    "{rows} {noun} in {:.3} s",
                    started.elapsed().as_secs_f64()
                )?;
            }
            self.last = Some((schema, batches));
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
            ("d", "") => {
                self.list_tables().await?;
                self.refresh_names().await?;
            }
            ("d", table) => self.describe(table).await?,
            ("format", "") => writeln!(self.out, "Output format is {}.", self.format)?,
            ("format", name) => {
                let format: Format = name.parse()?;
                if format == Format::Parquet {
                    writeln!(
                        self.out,
                        "ERROR: parquet goes to a file: \\o <file>.parquet"
                    )?;
                } else {
                    self.format = format;
                    writeln!(self.out, "Output format is {format}.")?;
                }
            }
            ("o", "") => {
                self.file = None;
                writeln!(self.out, "Results go to the terminal.")?;
            }
            ("o", path) => {
                let path = PathBuf::from(path);
                let format = Format::from_extension(&path).unwrap_or(self.format);
                writeln!(self.out, "Results go to {} as {format}.", path.display())?;
                self.file = Some(path);
            }
            ("chart", kind) => {
                let kind = match kind {
                    "" | "bar" => chart::Kind::Bar,
                    "line" => chart::Kind::Line,
                    other => {
                        writeln!(self.out, "ERROR: unknown chart {other:?} (bar or line)")?;
                        return Ok(Action::Continue);
                    }
                };
                match &self.last {
                    Some((schema, batches)) => {
                        let text = chart::render(schema, batches, kind)?;
                        write!(self.out, "{text}")?;
                    }
                    None => writeln!(self.out, "ERROR: no result to chart yet")?,
                }
            }
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
    run_one_shot_to(session, query, format, None).await
}

/// Like [`run_one_shot`], writing to `output` when given (the last
/// statement's result is what the file holds).
pub async fn run_one_shot_to(
    session: &Session,
    query: &str,
    format: Format,
    output: Option<&Path>,
) -> Result<()> {
    if format == Format::Parquet && output.is_none() {
        return Err(Error::Config(
            "--format parquet writes a file: add --output <file>".into(),
        ));
    }
    let statements = parse(query)?;
    let many = statements.len() > 1;
    for (i, statement) in statements.into_iter().enumerate() {
        let (schema, batches) = session.run(statement).await?;
        if let Some(path) = output {
            write_file(path, &schema, &batches, format)?;
            continue;
        }
        let mut out = std::io::stdout().lock();
        if many && i > 0 && format == Format::Table {
            writeln!(out)?;
        }
        render(&schema, &batches, format, &mut out)?;
    }
    Ok(())
}

/// Writes one result to `path` in `format`, replacing the file.
fn write_file(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    render(schema, batches, format, &mut file)?;
    file.flush()?;
    Ok(())
}

/// SQL words offered by completion besides table and column names.
const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "group by",
    "order by",
    "having",
    "limit",
    "join",
    "left join",
    "inner join",
    "on",
    "as",
    "and",
    "or",
    "not",
    "null",
    "is",
    "in",
    "between",
    "like",
    "distinct",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "case",
    "when",
    "then",
    "else",
    "end",
    "with",
    "union all",
    "explain",
    "analyze",
    "desc",
    "asc",
    "table_version",
    "table_at",
    "date_trunc",
    "cast",
];

/// Completion candidates for the word before `pos` in `line`: the start of
/// that word and the names (tables, columns, keywords) that extend it.
pub fn complete(names: &[String], line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let word = &before[start..];
    if word.is_empty() {
        return (pos, Vec::new());
    }
    let lower = word.to_ascii_lowercase();
    let upper = word.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    let mut found: Vec<String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().starts_with(&lower))
        .cloned()
        .collect();
    found.extend(KEYWORDS.iter().filter(|k| k.starts_with(&lower)).map(|k| {
        if upper {
            k.to_ascii_uppercase()
        } else {
            k.to_string()
        }
    }));
    found.sort();
    found.dedup();
    (start, found)
}

/// rustyline's view of the console: completion from the shared names.
struct SqlHelper {
    names: Arc<RwLock<Vec<String>>>,
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let (start, found) = complete(&names, line, pos);
        Ok((
            start,
            found
                .into_iter()
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n,
                })
                .collect(),
        ))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {}

impl Validator for SqlHelper {}

impl rustyline::Helper for SqlHelper {}

/// The interactive console on the terminal, with history kept in
/// `history_file` across sessions. Returns on `\q` or Ctrl-D.
pub async fn run_console(session: Session, history_file: PathBuf) -> Result<()> {
    let mut editor: rustyline::Editor<SqlHelper, FileHistory> = rustyline::Editor::new()?;
    match editor.load_history(&history_file) {
        Ok(()) => {}
        Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %history_file.display(), error = %e, "could not load console history")
        }
    }
    let mut console = Console::new(session, std::io::stdout());
    if let Err(e) = console.refresh_names().await {
        tracing::warn!(error = %e.report(), "tab completion has no table names");
    }
    editor.set_helper(Some(SqlHelper {
        names: console.names(),
    }));
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
fn save_history(editor: &mut rustyline::Editor<SqlHelper, FileHistory>, path: &Path) {
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
