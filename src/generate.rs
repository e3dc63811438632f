//! `echod generate`: the man page and shell completions, made from the
//! same clap definition as `--help` (the `clap::Command` the caller
//! passes), so they can never disagree with it.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use clap_complete::Shell;

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
    #[arg(long, value_name = "DIR")]
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
            None => text = main_page(command)?,
            Some(shell) => {
                let name = command.get_name().to_string();
                clap_complete::generate(shell, &mut command, name, &mut text);
            }
        }
        Ok(text)
    }

    /// Writes the files into `dir`; returns their paths.
    fn write_files(&self, mut command: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let written = match self.what.shell() {
            None => {
                clap_mangen::generate_to(command.clone(), dir)?;
                command.build();
                // The same pages, but echod(1) with its EXIT STATUS section.
                let main = dir.join(clap_mangen::Man::new(command.clone()).get_filename());
                std::fs::write(main, main_page(command.clone())?)?;
                let mut pages = Vec::new();
                man_pages(&command, dir, &mut pages);
                pages
            }
            Some(shell) => {
                let name = command.get_name().to_string();
                vec![clap_complete::generate_to(shell, &mut command, name, dir)?]
            }
        };
        Ok(written)
    }
}

/// echod(1): the page clap_mangen makes, with an EXIT STATUS section
/// (which it has no place for) where man-pages(7) puts it, after the
/// options and the other text, before the version.
fn main_page(command: clap::Command) -> io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    let mut section = roff::Roff::new();
    section.control("SH", ["EXIT STATUS"]);
    for &(status, meaning) in EXIT_STATUSES {
        section.control("TP", []);
        section.text([roff::bold(status.to_string())]);
        section.text([roff::roman(meaning)]);
    }
    section.control("PP", []);
    section.text([roff::roman(
        "These are the statuses of echod serving; each subcommand's page \
         (echod-client(1), echod-ping(1), echod-bench(1), echod-check(1)) gives its own.",
    )]);
    let section = section.to_roff().into_bytes();
    let at = find(&page, b"\n.SH VERSION").map_or(page.len(), |at| at + 1);
    page.splice(at..at, section);
    Ok(page)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The pages `clap_mangen::generate_to` writes: one for the command and
/// one for each (visible) subcommand, at any depth.
fn man_pages(command: &clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) {
    pages.push(dir.join(clap_mangen::Man::new(command.clone()).get_filename()));
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        man_pages(sub, dir, pages);
    }
}
