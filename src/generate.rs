//! `echod generate`: the man page and shell completions, made from the
//! same clap definition as `--help` (the `clap::Command` the caller
//! passes), so they can never disagree with it.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, ValueEnum};
use clap_complete::{Generator, Shell};
use roff::{Roff, bold, italic, roman};

use echod_server::server::EXIT_STATUSES;

const WHERE_TO_PUT_THEM: &str = "\
With --dir, the files are written there under their usual names instead
(for the man page: echod.1 and a page per subcommand, echod-generate.1, …).

Where the files go (system-wide; per user in brackets):
  echod generate man  > /usr/local/share/man/man1/echod.1
                        [~/.local/share/man/man1/echod.1]
  echod generate bash > /usr/share/bash-completion/completions/echod
                        [~/.local/share/bash-completion/completions/echod]
  echod generate zsh  > /usr/local/share/zsh/site-functions/_echod
                        [a directory listed in $fpath, as _echod]
  echod generate fish > /usr/share/fish/vendor_completions.d/echod.fish
                        [~/.config/fish/completions/echod.fish]

View the man page without installing it: echod generate man | man -l -";

/// Arguments of `echod generate`.
#[derive(Debug, Args)]
#[command(after_help = WHERE_TO_PUT_THEM)]
pub struct GenerateArgs {
    /// What to print to standard output: the man page (roff), or the
    /// completion script for a shell.
    #[arg(value_enum, value_name = "WHAT")]
    pub what: Generated,

    /// Write the file(s) into this directory instead of printing; the
    /// paths written are printed.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub dir: Option<PathBuf>,
}

/// The things `echod generate` can print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// The man page, echod(1), in roff.
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
    /// Completions for elvish.
    Elvish,
    /// Completions for PowerShell.
    Powershell,
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shell() {
            None => f.write_str("man page"),
            Some(shell) => write!(f, "{shell} completions"),
        }
    }
}

impl Generated {
    fn shell(self) -> Option<Shell> {
        match self {
            Generated::Man => None,
            Generated::Bash => Some(Shell::Bash),
            Generated::Zsh => Some(Shell::Zsh),
            Generated::Fish => Some(Shell::Fish),
            Generated::Elvish => Some(Shell::Elvish),
            Generated::Powershell => Some(Shell::PowerShell),
        }
    }
}

impl GenerateArgs {
    /// Writes what was asked for, made from `command` (echod's whole
    /// command line): to `out`, or with `--dir` into files whose paths are
    /// then listed on `out`.
    pub fn write(&self, command: clap::Command, out: &mut dyn Write) -> io::Result<()> {
        // Without the `help` subcommand, which needs no page of its own.
        let command = command.disable_help_subcommand(true);
        let text = match &self.dir {
            None => self.render(command)?,
            Some(dir) => {
                let mut listing = String::new();
                for path in self.write_files(command, dir)? {
                    listing.push_str(&format!("{}\n", path.display()));
                }
                listing.into_bytes()
            }
        };
        out.write_all(&text)?;
        out.flush()
    }

    /// The man page or script, made in memory: clap_complete panics when
    /// its writer fails, and a closed pipe (`echod generate bash | head`)
    /// must not do that.
    fn render(&self, mut command: clap::Command) -> io::Result<Vec<u8>> {
        let mut text = Vec::new();
        match self.what.shell() {
            None => {
                command.build();
                text = pages(&command)?.swap_remove(0).1;
            }
            Some(shell) => {
                let name = command.get_name().to_string();
                clap_complete::generate(shell, &mut command, name, &mut text);
                if shell == Shell::Fish {
                    text.extend_from_slice(fish_positionals(&command).as_bytes());
                }
            }
        }
        Ok(text)
    }

    /// Writes the files into `dir`; returns their paths.
    fn write_files(&self, mut command: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let written = match self.what.shell() {
            None => {
                command.build();
                let mut written = Vec::new();
                for (name, text) in pages(&command)? {
                    let path = dir.join(name);
                    std::fs::write(&path, text)?;
                    written.push(path);
                }
                written
            }
            // The script as printed, under the name the shell looks for.
            Some(shell) => {
                let path = dir.join(shell.file_name(command.get_name()));
                std::fs::write(&path, self.render(command)?)?;
                vec![path]
            }
        };
        Ok(written)
    }
}

/// The fish completions clap_complete leaves out: it completes options
/// only, so after `echod generate` fish offered file names instead of
/// the verbs. One line per possible value of each subcommand's
/// positionals, with `-f` so that no file names join them.
fn fish_positionals(command: &clap::Command) -> String {
    let name = command.get_name();
    let mut lines = String::new();
    for sub in command.get_subcommands() {
        for arg in sub.get_positionals() {
            for value in arg.get_possible_values() {
                let help = value
                    .get_help()
                    .map(|help| format!(" -d '{}'", help.to_string().replace('\'', "\\'")))
                    .unwrap_or_default();
                lines.push_str(&format!(
                    "complete -c {name} -n \"__fish_{name}_using_subcommand {}\" -f -a \"{}\"{help}\n",
                    sub.get_name(),
                    value.get_name()
                ));
            }
        }
    }
    lines
}

/// A man page: clap_mangen's sections where they serve (name,
/// description, options, subcommands, version), and echod's own where
/// they do not.
///
/// clap_mangen puts the text after `--help`'s options into one section
/// called EXTRA, line by line in fill mode, so man reflows the examples
/// into one paragraph; and its SYNOPSIS names the options without their
/// values (`[-p|--port]`). Here the SYNOPSIS shows `[-p|--port PORT]`,
/// and the after-help text is split into the sections man-pages(7) names:
/// EXIT STATUS (from `statuses` when given, the server's table, else from
/// the help's "Exit status:" paragraph), NOTES for prose, and EXAMPLES,
/// preformatted, for every paragraph whose lines are indented.
fn page(command: &clap::Command, about: &Page<'_>) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command.clone()).source(about.source);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    section(&mut out, |w| man.render_name_section(w))?;
    own(&mut out, &synopsis(command));
    section(&mut out, |w| man.render_description_section(w))?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        section(&mut out, |w| man.render_options_section(w))?;
    }
    if command.get_subcommands().any(|sub| !sub.is_hide_set()) {
        section(&mut out, |w| man.render_subcommands_section(w))?;
    }
    let after = command
        .get_after_long_help()
        .or_else(|| command.get_after_help())
        .map(|text| text.to_string())
        .unwrap_or_default();
    let blocks = Blocks::of(&after);
    own(&mut out, &exit_status(about.statuses, blocks.exit_status));
    if !blocks.notes.is_empty() {
        own(&mut out, &notes(&blocks.notes));
    }
    if !blocks.examples.is_empty() {
        own(&mut out, &examples(&blocks.examples));
    }
    if !about.see_also.is_empty() {
        let mut roff = Roff::new();
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(about.see_also.join(", "))]);
        own(&mut out, &roff);
    }
    if command.get_version().is_some() || command.get_long_version().is_some() {
        section(&mut out, |w| man.render_version_section(w))?;
    }
    Ok(out)
}

/// What a page needs besides its command.
struct Page<'a> {
    /// The footer's "echod 0.1.0" (clap_mangen would put the subcommand's
    /// name there, and no version, on a subcommand's page).
    source: &'a str,
    /// The server's exit statuses, for echod(1) only.
    statuses: Option<&'a [(u8, &'a str)]>,
    /// The other pages worth reading, as `echod(1)`.
    see_also: Vec<String>,
}

/// Appends a section clap_mangen renders.
fn section(
    out: &mut Vec<u8>,
    render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let mut text = Vec::new();
    render(&mut text)?;
    out.extend_from_slice(without_preamble(&text));
    Ok(())
}

/// Appends a section of echod's own.
fn own(out: &mut Vec<u8>, roff: &Roff) {
    out.extend_from_slice(without_preamble(roff.render().as_bytes()));
}

/// `roff` text with the apostrophe preamble every `Roff` writes dropped:
/// the page keeps the one its title wrote.
fn without_preamble(text: &[u8]) -> &[u8] {
    let mut rest = text;
    for start in [&b".ie "[..], &b".el "[..]] {
        if rest.starts_with(start) {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |at| at + 1);
            rest = &rest[end..];
        }
    }
    rest
}

/// SYNOPSIS as `--help`'s usage line has it, but spelt out: every visible
/// option with its value name (`[-p|--port PORT]`), then the positionals,
/// then `[COMMAND]` where there are subcommands.
fn synopsis(command: &clap::Command) -> Roff {
    let mut line = vec![bold(command.get_bin_name().unwrap_or(command.get_name()))];
    let visible = || command.get_arguments().filter(|arg| !arg.is_hide_set());
    for arg in visible().filter(|arg| !arg.is_positional()) {
        let (open, close) = if arg.is_required_set() {
            ("", "")
        } else {
            ("[", "]")
        };
        line.push(roman(format!(" {open}")));
        match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => {
                line.push(bold(format!("-{short}")));
                line.push(roman("|"));
                line.push(bold(format!("--{long}")));
            }
            (Some(short), None) => line.push(bold(format!("-{short}"))),
            (None, Some(long)) => line.push(bold(format!("--{long}"))),
            (None, None) => continue,
        }
        if arg.get_action().takes_values() {
            line.push(roman(" "));
            line.push(italic(value_name(arg)));
            if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                line.push(roman("..."));
            }
        }
        line.push(roman(close));
        let many_values = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        if matches!(arg.get_action(), ArgAction::Count)
            || matches!(arg.get_action(), ArgAction::Append) && !many_values
        {
            line.push(roman("..."));
        }
    }
    for arg in visible().filter(|arg| arg.is_positional()) {
        let (open, close) = if arg.is_required_set() {
            ("", "")
        } else {
            ("[", "]")
        };
        line.push(roman(format!(" {open}")));
        line.push(italic(value_name(arg)));
        line.push(roman(close));
    }
    if command.get_subcommands().any(|sub| !sub.is_hide_set()) {
        line.push(roman(" ["));
        line.push(italic("COMMAND"));
        line.push(roman("]"));
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text(line);
    roff
}

fn value_name(arg: &clap::Arg) -> String {
    match arg.get_value_names() {
        Some(names) => names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        None => arg.get_id().as_str().to_uppercase(),
    }
}

/// The paragraphs of a command's after-help text, sorted by the section
/// of the man page they belong in.
#[derive(Default)]
struct Blocks<'a> {
    /// The "Exit status:" paragraph: the rest of its heading line (empty
    /// when a list follows), then its other lines.
    exit_status: Option<Vec<&'a str>>,
    /// Paragraphs of prose.
    notes: Vec<Vec<&'a str>>,
    /// Paragraphs with indented lines: examples and listings, kept as
    /// they are ("Examples:" headings dropped, as the section says it).
    examples: Vec<Vec<&'a str>>,
}

impl<'a> Blocks<'a> {
    fn of(text: &'a str) -> Blocks<'a> {
        let mut blocks = Blocks::default();
        for paragraph in text.split("\n\n") {
            let mut lines: Vec<&str> = paragraph.lines().collect();
            while lines.last().is_some_and(|line| line.trim().is_empty()) {
                lines.pop();
            }
            let Some(&first) = lines.first() else {
                continue;
            };
            if let Some(rest) = first.strip_prefix("Exit status:") {
                let mut body = vec![rest.trim()];
                body.extend(&lines[1..]);
                blocks.exit_status = Some(body);
            } else if lines[1..].iter().any(|line| line.starts_with(' ')) {
                if first == "Examples:" {
                    lines.remove(0);
                }
                blocks.examples.push(lines);
            } else {
                blocks.notes.push(lines);
            }
        }
        blocks
    }
}

/// EXIT STATUS: the `statuses` table when there is one, else the help's
/// paragraph, as a list when its lines start with a status
/// (`  0  every check passed`), else as prose.
fn exit_status(statuses: Option<&[(u8, &str)]>, from_help: Option<Vec<&str>>) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    if let Some(statuses) = statuses {
        for &(status, meaning) in statuses {
            roff.control("TP", []);
            roff.text([bold(status.to_string())]);
            roff.text([roman(meaning)]);
        }
        roff.control("PP", []);
        roff.text([roman(
            "These are the statuses of echod serving; each subcommand's page \
             (echod-client(1), echod-ping(1), echod-bench(1), echod-check(1)) gives its own.",
        )]);
        return roff;
    }
    let lines = from_help.unwrap_or_default();
    // A list starts on the line after the heading; prose right after it
    // ("Exit status: 0 if …") is a paragraph.
    let list = lines.first().is_some_and(|first| first.is_empty())
        && lines.iter().any(|line| listed(line).is_some());
    if list {
        for line in lines.iter().filter(|line| !line.trim().is_empty()) {
            match listed(line) {
                Some((status, meaning)) => {
                    roff.control("TP", []);
                    roff.text([bold(status)]);
                    roff.text([roman(meaning)]);
                }
                // A meaning continued on the next line.
                None => {
                    roff.text([roman(line.trim())]);
                }
            }
        }
    } else {
        roff.text([roman(join(&lines))]);
    }
    roff
}

/// A line of an exit-status list, `  0  every check passed`, split into
/// the status and its meaning.
fn listed(line: &str) -> Option<(&str, &str)> {
    let (status, meaning) = line.trim_start().split_once(char::is_whitespace)?;
    status.parse::<u8>().ok()?;
    Some((status, meaning.trim()))
}

/// NOTES: each prose paragraph, reflowed as man does.
fn notes(paragraphs: &[Vec<&str>]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["NOTES"]);
    for (i, lines) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(join(lines))]);
    }
    roff
}

/// EXAMPLES: each paragraph preformatted (no fill, so the commands and
/// their comments keep their columns); a heading such as "Talk to it:"
/// stays as a line of its own.
fn examples(paragraphs: &[Vec<&str>]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXAMPLES"]);
    for (i, lines) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let (heading, body) = match lines.first() {
            Some(first) if !first.starts_with(' ') => (Some(*first), &lines[1..]),
            _ => (None, &lines[..]),
        };
        if let Some(heading) = heading {
            roff.text([roman(heading)]);
        }
        // The indentation the help gives them all, which .RS replaces.
        let indent = body
            .iter()
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.len() - line.trim_start().len())
            .min()
            .unwrap_or(0);
        roff.control("RS", ["4"]);
        roff.control("nf", []);
        for line in body {
            roff.text([roman(line.get(indent..).unwrap_or(""))]);
        }
        roff.control("fi", []);
        roff.control("RE", []);
    }
    roff
}

/// The lines of a prose paragraph as one line of text.
fn join(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every page: echod(1), with the server's exit statuses, and one per
/// visible subcommand at any depth, as `(file name, roff)`. The command
/// must be built (`Command::build`), so that subcommands know their
/// names (`echod client`, `echod-client`).
fn pages(command: &clap::Command) -> io::Result<Vec<(String, Vec<u8>)>> {
    let source = format!(
        "{} {}",
        command.get_name(),
        command.get_version().unwrap_or_default()
    );
    let mut made = Vec::new();
    add_pages(command, &source, None, &mut made)?;
    Ok(made)
}

fn add_pages(
    command: &clap::Command,
    source: &str,
    parent: Option<&str>,
    out: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    let man = clap_mangen::Man::new(command.clone());
    let this = format!(
        "{}(1)",
        command.get_display_name().unwrap_or(command.get_name())
    );
    let about = Page {
        source,
        statuses: parent.is_none().then_some(EXIT_STATUSES),
        // A tool's page points back at echod(1), which lists them all.
        see_also: parent.map(str::to_string).into_iter().collect(),
    };
    out.push((man.get_filename(), page(command, &about)?));
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        add_pages(sub, source, Some(&this), out)?;
    }
    Ok(())
}
