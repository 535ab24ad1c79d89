//! The one command-line parser: a subcommand is a [`Command`] (its flags and their help, from
//! which the usage text is generated); [`Command::parse`] turns the arguments into [`Parsed`]
//! flags in the order given. Tokenising (`--flag value`, `--flag=value`, `-h`) is `lexopt`'s.
//! It knows nothing of what a flag means: the subcommands interpret [`Parsed`].

use std::ffi::OsString;
use std::fmt::Write as _;

/// One flag of a subcommand.
#[derive(Debug)]
pub struct Flag {
    /// The long name without the leading `--`.
    pub name: &'static str,
    /// The value's placeholder (`FILE`, `SECS`), or `None` for a switch.
    pub value: Option<&'static str>,
    /// Whether the flag may be given more than once.
    pub repeats: bool,
    /// One or more lines of help.
    pub help: &'static str,
}

impl Flag {
    /// A flag taking a value.
    pub const fn value(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value: Some(value),
            repeats: false,
            help,
        }
    }

    /// A flag taking a value that may be given more than once.
    pub const fn repeated(name: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value: Some(value),
            repeats: true,
            help,
        }
    }

    /// A switch (no value).
    pub const fn switch(name: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            value: None,
            repeats: false,
            help,
        }
    }
}

/// A subcommand: its name, what it does, its flags and positional arguments.
#[derive(Debug)]
pub struct Command {
    pub name: &'static str,
    /// One line, shown in the top-level help.
    pub summary: &'static str,
    /// Paragraphs after the flag list (exit status, defaults that need a sentence).
    pub notes: &'static str,
    /// Placeholder of the positional arguments (`FILE...`), or `None` when there are none.
    pub positional: Option<&'static str>,
    pub flags: &'static [Flag],
}

/// What went wrong on the command line, or a request for help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("help requested")]
    Help,
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// A bad value or combination of flags, found after parsing.
    pub fn usage(problem: impl Into<String>) -> CliError {
        CliError::Usage(problem.into())
    }

    /// A flag the [`Command`] declares but its subcommand does not interpret: a bug, reported
    /// rather than ignored (every subcommand's test gives every declared flag).
    pub fn unhandled(flag: &str) -> CliError {
        CliError::Usage(format!("--{flag} is declared but not handled (a bug)"))
    }
}

/// The flags given, in order, with their values (`""` for a switch), and the positional arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub flags: Vec<(&'static str, String)>,
    pub positional: Vec<String>,
}

impl Parsed {
    /// The flags in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.flags.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// Whether the switch or flag `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| *n == name)
    }

    /// The value of the last `--name` given.
    pub fn last(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Command {
    fn flag(&self, name: &str) -> Option<&'static Flag> {
        // `flags` is `'static`, so the flag found is too.
        let flags: &'static [Flag] = self.flags;
        flags.iter().find(|f| f.name == name)
    }

    /// The usage text: synopsis, one paragraph per flag, notes.
    pub fn usage(&self) -> String {
        let mut out = format!("usage: egress-guard {}", self.name);
        if !self.flags.is_empty() {
            out.push_str(" [FLAGS]");
        }
        if let Some(p) = self.positional {
            let _ = write!(out, " [{p}]");
        }
        let _ = write!(out, "\n{}\n", self.summary);
        let cells: Vec<(String, &str)> = self
            .flags
            .iter()
            .map(|f| {
                let mut cell = format!("--{}", f.name);
                if let Some(v) = f.value {
                    let _ = write!(cell, " {v}");
                }
                if f.repeats {
                    cell.push_str(" ...");
                }
                (cell, f.help)
            })
            .chain(std::iter::once(("--help".to_string(), "print this help")))
            .collect();
        let width = cells.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        out.push_str("\nflags:\n");
        for (cell, help) in &cells {
            for (i, line) in help.lines().enumerate() {
                let head = if i == 0 { cell.as_str() } else { "" };
                let _ = writeln!(out, "  {head:<width$}  {line}");
            }
        }
        if !self.notes.is_empty() {
            let _ = write!(out, "\n{}\n", self.notes);
        }
        out
    }

    /// Parses `args` (the subcommand's own arguments). `--help` or `-h` anywhere is
    /// [`CliError::Help`]; an unknown flag, a missing value, a value given to a switch, a
    /// repeated single flag or an unexpected positional argument is [`CliError::Usage`].
    pub fn parse<I>(&self, args: I) -> Result<Parsed, CliError>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        use lexopt::Arg;
        let mut parser = lexopt::Parser::from_args(args);
        let mut out = Parsed::default();
        loop {
            let arg = parser.next().map_err(|e| CliError::Usage(e.to_string()))?;
            let Some(arg) = arg else { break };
            match arg {
                Arg::Long("help") | Arg::Short('h') => return Err(CliError::Help),
                Arg::Long(name) => {
                    let flag = self.flag(name).ok_or_else(|| {
                        CliError::Usage(format!("unknown flag --{name}{}", self.suggest(name)))
                    })?;
                    let value = match flag.value {
                        Some(placeholder) => {
                            let v = parser.value().map_err(|_| {
                                CliError::Usage(format!(
                                    "--{} needs a value ({placeholder})",
                                    flag.name
                                ))
                            })?;
                            v.into_string().map_err(|v| {
                                CliError::Usage(format!(
                                    "--{} {}: not valid UTF-8",
                                    flag.name,
                                    v.to_string_lossy()
                                ))
                            })?
                        }
                        None => String::new(),
                    };
                    if !flag.repeats && out.has(flag.name) {
                        return Err(CliError::Usage(format!("--{} given twice", flag.name)));
                    }
                    out.flags.push((flag.name, value));
                }
                Arg::Short(c) => return Err(CliError::Usage(format!("unknown flag -{c}"))),
                Arg::Value(v) => {
                    let text = v.to_string_lossy().into_owned();
                    if self.positional.is_none() {
                        return Err(CliError::Usage(format!("unexpected argument \"{text}\"")));
                    }
                    let v = v.into_string().map_err(|_| {
                        CliError::Usage(format!("argument \"{text}\": not valid UTF-8"))
                    })?;
                    out.positional.push(v);
                }
            }
        }
        Ok(out)
    }

    /// ` (did you mean --x?)` for the known flag closest to `name`, if one is close.
    fn suggest(&self, name: &str) -> String {
        crate::spelling::closest(name, self.flags.iter().map(|f| f.name))
            .map(|known| format!(" (did you mean --{known}?)"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: Command = Command {
        name: "demo",
        summary: "a demonstration",
        notes: "exit status: 0 always",
        positional: None,
        flags: &[
            Flag::value("config", "FILE", "the config\nsecond line"),
            Flag::repeated("annotation", "KEY=VALUE", "one annotation"),
            Flag::switch("json", "print JSON"),
        ],
    };

    fn parse(args: &[&str]) -> Result<Parsed, CliError> {
        CMD.parse(args.iter().copied())
    }

    #[test]
    fn values_given_both_ways_and_in_order() {
        let p = parse(&[
            "--config",
            "a.json",
            "--annotation=k=v",
            "--json",
            "--annotation",
            "x=y",
        ])
        .unwrap();
        let got: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            got,
            [
                ("config", "a.json"),
                ("annotation", "k=v"),
                ("json", ""),
                ("annotation", "x=y")
            ]
        );
        assert_eq!(p.last("annotation"), Some("x=y"));
        assert!(p.has("json"));
        assert!(!p.has("nothing"));
        // A value that looks like a flag is taken as the value when given with `=`.
        assert_eq!(
            parse(&["--config=--json"]).unwrap().last("config"),
            Some("--json")
        );
    }

    #[test]
    fn help_anywhere_wins() {
        assert_eq!(parse(&["--help"]), Err(CliError::Help));
        assert_eq!(parse(&["--json", "-h"]), Err(CliError::Help));
    }

    #[test]
    fn bad_command_lines_name_the_problem() {
        let cases: [(&[&str], &str); 7] = [
            (&["--bogus"], "unknown flag --bogus"),
            (&["--jsn"], "unknown flag --jsn (did you mean --json?)"),
            (&["--config"], "--config needs a value (FILE)"),
            (&["--json=yes"], "--json"),
            (&["--config", "a", "--config", "b"], "--config given twice"),
            (&["stray"], "unexpected argument \"stray\""),
            (&["-x"], "unknown flag -x"),
        ];
        for (args, want) in cases {
            match parse(args) {
                Err(CliError::Usage(m)) => assert!(m.contains(want), "{args:?}: {m}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn positional_arguments_when_declared() {
        let cmd = Command {
            positional: Some("FILE..."),
            ..CMD
        };
        let p = cmd.parse(["a", "--json", "b"]).unwrap();
        assert_eq!(p.positional, ["a", "b"]);
        assert!(cmd
            .usage()
            .starts_with("usage: egress-guard demo [FLAGS] [FILE...]\n"));
    }

    #[test]
    fn usage_lists_every_flag_and_help() {
        let u = CMD.usage();
        assert!(
            u.starts_with("usage: egress-guard demo [FLAGS]\na demonstration\n"),
            "{u}"
        );
        let width = "--annotation KEY=VALUE ...".len();
        for (flag, text) in [
            ("--config FILE", "the config"),
            ("", "second line"),
            ("--json", "print JSON"),
            ("--help", "print this help"),
        ] {
            let line = format!("  {flag:<width$}  {text}\n");
            assert!(u.contains(&line), "{line:?} not in {u}");
        }
        assert!(u.ends_with("\nexit status: 0 always\n"), "{u}");
    }
}
