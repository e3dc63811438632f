//! The report of a run: one line per check as text, or one JSON object,
//! and the exit status it comes to.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{CHECKS, CheckConfig, CheckResult, Defect, Outcome, got_bytes};
use echod_server::net::Transport;

/// Everything a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The target as given (`host:port`).
    pub target: String,
    /// TCP or UDP.
    pub transport: Transport,
    /// The bound on each check's waiting.
    pub timeout: Duration,
    /// Clients of the concurrency check.
    pub clients: usize,
    /// One entry per address checked (one per address family).
    pub addresses: Vec<AddressReport>,
    /// How long the whole run took.
    pub elapsed: Duration,
}

/// The checks on one address.
#[derive(Clone, Debug)]
pub struct AddressReport {
    /// The address.
    pub addr: SocketAddr,
    /// Why it could not be reached, if it could not (its checks are then
    /// all skipped).
    pub unreachable: Option<String>,
    /// One result per check, in the order they ran.
    pub results: Vec<CheckResult>,
}

impl AddressReport {
    fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }

    fn outcome_of(&self, name: &str) -> Option<Outcome> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.outcome)
    }

    /// What the results come to, in one sentence about the server: the
    /// defect of the first failure (later checks build on earlier ones,
    /// so the first is the cause), said in the light of what passed, and
    /// any other defect seen after it. `None` when nothing ran.
    pub fn root_cause(&self) -> Option<String> {
        if self.unreachable.is_some() || self.results.is_empty() {
            return None;
        }
        let failures: Vec<&CheckResult> = self
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .collect();
        let Some(first) = failures.first() else {
            return Some(if self.count(Outcome::Pass) == 0 {
                "was not tested: every check was skipped".to_string()
            } else {
                "echoes as RFC 862 asks: no check failed".to_string()
            });
        };
        let echoes = self.count(Outcome::Pass) > 0;
        let mut text = match first.defect {
            Some(Defect::NeverReplying) if first.name == "echo" => {
                if self.outcome_of("half-close") == Some(Outcome::Pass) {
                    "holds every echo back until the client half-closes (its output is \
                     buffered until EOF)"
                        .to_string()
                } else if self.results.iter().any(|r| got_bytes(&r.figures)) {
                    // Silent to `echo`, yet a later check got bytes back.
                    "holds its echo back (its output is buffered) and sends it only later"
                        .to_string()
                } else {
                    "accepts connections but echoes nothing".to_string()
                }
            }
            Some(defect) if echoes => format!("echoes, but {}", defect.what()),
            Some(defect) => defect.what().to_string(),
            None => format!("fails {}: its line says what was seen", first.name),
        };
        let mut also: Vec<&str> = Vec::new();
        for failure in &failures[1..] {
            if let Some(defect) = failure.defect {
                if Some(defect) != first.defect && !also.contains(&defect.name()) {
                    also.push(defect.name());
                }
            }
        }
        if !also.is_empty() {
            let _ = write!(text, " (also seen: {})", also.join(", "));
        }
        Some(text)
    }
}

impl Report {
    /// 0 when nothing failed, 1 when a check failed, 2 when an address
    /// could not be reached (the run is incomplete, which matters most).
    pub fn exit_code(&self) -> u8 {
        if self.addresses.iter().any(|a| a.unreachable.is_some()) {
            2
        } else if self.failed() > 0 {
            1
        } else {
            0
        }
    }

    /// How many checks failed, over all addresses.
    pub fn failed(&self) -> usize {
        self.addresses.iter().map(|a| a.count(Outcome::Fail)).sum()
    }

    /// The result of check `name` on the first address.
    pub fn result(&self, name: &str) -> Option<&CheckResult> {
        self.addresses
            .first()?
            .results
            .iter()
            .find(|r| r.name == name)
    }

    /// Every result, over all addresses.
    pub fn results(&self) -> impl Iterator<Item = &CheckResult> {
        self.addresses.iter().flat_map(|a| a.results.iter())
    }

    /// The closing lines: a count per address and what to do next.
    pub fn render_summary(&self) -> String {
        let mut text = String::new();
        for address in &self.addresses {
            if address.unreachable.is_some() {
                // The reason was printed as an error when it happened.
                let _ = writeln!(text, "{}: not checked (unreachable)", address.addr);
                continue;
            }
            let failed: Vec<&str> = address
                .results
                .iter()
                .filter(|r| r.outcome == Outcome::Fail)
                .map(|r| r.name)
                .collect();
            let _ = write!(
                text,
                "{}: {} passed, {} failed, {} skipped",
                address.addr,
                address.count(Outcome::Pass),
                failed.len(),
                address.count(Outcome::Skip),
            );
            if !failed.is_empty() {
                let _ = write!(text, " ({})", failed.join(", "));
            }
            text.push('\n');
            if let Some(cause) = address.root_cause() {
                // A cause is what failures have; a clean run has a verdict.
                let label = if failed.is_empty() {
                    "verdict"
                } else {
                    "root cause"
                };
                let _ = writeln!(text, "{label}: the server {cause}");
            }
        }
        let _ = write!(
            text,
            "{} ({})",
            match self.exit_code() {
                0 => "the server passed every check that ran",
                1 => "the server failed checks: each FAIL line says what was seen",
                _ => "the run is incomplete: an address could not be reached",
            },
            fmt_duration(self.elapsed)
        );
        text
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let addresses: Vec<Value> = self
            .addresses
            .iter()
            .map(|a| {
                json!({
                    "address": a.addr.to_string(),
                    "unreachable": a.unreachable,
                    "passed": a.count(Outcome::Pass),
                    "failed": a.count(Outcome::Fail),
                    "skipped": a.count(Outcome::Skip),
                    "root_cause": a.root_cause(),
                    "checks": a.results.iter().map(result_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let count = |o| self.addresses.iter().map(|a| a.count(o)).sum::<usize>();
        json!({
            "target": self.target,
            "transport": self.transport.to_string(),
            "timeout_secs": self.timeout.as_secs_f64(),
            "clients": self.clients,
            "addresses": addresses,
            "summary": {
                "passed": count(Outcome::Pass),
                "failed": count(Outcome::Fail),
                "skipped": count(Outcome::Skip),
                "elapsed_secs": seconds(self.elapsed),
                "exit_code": self.exit_code(),
            },
        })
    }
}

/// The rule check `name` tests, from the catalogue.
fn rule_of(name: &str) -> &'static str {
    CHECKS
        .iter()
        .find(|c| c.name == name)
        .map_or("", |c| c.rule)
}

/// The source a rule cites: `RFC 862`, `RFC 9293 section 3.6 and …`.
pub fn cited(rule: &str) -> &str {
    rule.split_once(':').map_or(rule, |(source, _)| source)
}

/// `--json` when the run could not start (the name did not resolve): the
/// target, the error, and the exit status, in the report's shape.
pub fn error_json(config: &CheckConfig, error: &str) -> Value {
    json!({
        "target": config.target.to_string(),
        "transport": config.transport.to_string(),
        "error": error,
        "addresses": [],
        "summary": {
            "passed": 0,
            "failed": 0,
            "skipped": 0,
            "exit_code": 2,
        },
    })
}

/// `--junit` when the run could not start: one test case, in error, with
/// the reason.
pub fn error_junit(config: &CheckConfig, error: &str) -> String {
    let suite = escape(&format!(
        "echod check {} {}",
        config.transport, config.target
    ));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"echod check\" tests=\"1\" failures=\"0\" skipped=\"0\" errors=\"1\">\n  \
         <testsuite name=\"{suite}\" tests=\"1\" failures=\"0\" skipped=\"0\" errors=\"1\">\n    \
         <testcase name=\"resolve\" classname=\"{suite}\">\n      \
         <error message=\"{}\" type=\"unresolved\"/>\n    </testcase>\n  </testsuite>\n</testsuites>\n",
        escape(error)
    )
}

fn result_json(result: &CheckResult) -> Value {
    let figures: Map<String, Value> = result
        .figures
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    json!({
        "name": result.name,
        "rule": rule_of(result.name),
        "outcome": result.outcome.label().to_ascii_lowercase(),
        "detail": result.detail,
        "defect": result.defect.map(|d| d.name()),
        "elapsed_secs": seconds(result.elapsed),
        "figures": figures,
    })
}

fn seconds(time: Duration) -> f64 {
    (time.as_secs_f64() * 1e6).round() / 1e6
}

impl Report {
    /// The report as JUnit XML, the format CI systems read: one
    /// `<testsuite>` per address, one `<testcase>` per check, a failure
    /// with its defect as `type` and the rule in the text, a skip with its
    /// reason. The checks of an address that could not be reached are
    /// errors, not skips: the run is incomplete (exit status 2), and a CI
    /// system that reads only the report must not count it as passed.
    pub fn to_junit(&self) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let count = |o| {
            self.addresses
                .iter()
                .filter(|a| a.unreachable.is_none())
                .map(|a| a.count(o))
                .sum::<usize>()
        };
        let errors = |a: &AddressReport| {
            if a.unreachable.is_some() {
                a.results.len()
            } else {
                0
            }
        };
        let total: usize = self.addresses.iter().map(|a| a.results.len()).sum();
        let _ = writeln!(
            xml,
            "<testsuites name=\"echod check\" tests=\"{total}\" failures=\"{}\" \
             skipped=\"{}\" errors=\"{}\" time=\"{}\">",
            count(Outcome::Fail),
            count(Outcome::Skip),
            self.addresses.iter().map(errors).sum::<usize>(),
            seconds(self.elapsed)
        );
        for address in &self.addresses {
            let suite = format!("echod check {} {}", self.transport, address.addr);
            let elapsed: Duration = address.results.iter().map(|r| r.elapsed).sum();
            let _ = writeln!(
                xml,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" \
                 errors=\"{}\" time=\"{}\">",
                escape(&suite),
                address.results.len(),
                address.count(Outcome::Fail),
                if address.unreachable.is_some() {
                    0
                } else {
                    address.count(Outcome::Skip)
                },
                errors(address),
                seconds(elapsed)
            );
            for result in &address.results {
                let _ = write!(
                    xml,
                    "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
                    escape(result.name),
                    escape(&suite),
                    seconds(result.elapsed)
                );
                let rule = rule_of(result.name);
                match result.outcome {
                    Outcome::Pass => {}
                    Outcome::Fail => {
                        let kind = result.defect.map_or("failed", |d| d.name());
                        let _ = write!(
                            xml,
                            "\n      <failure message=\"{}\" type=\"{kind}\">{}\nrule: {}</failure>",
                            escape(&result.detail),
                            escape(&result.detail),
                            escape(rule)
                        );
                    }
                    Outcome::Skip if address.unreachable.is_some() => {
                        let _ = write!(
                            xml,
                            "\n      <error message=\"{}\" type=\"unreachable\"/>",
                            escape(&result.detail)
                        );
                    }
                    Outcome::Skip => {
                        let _ = write!(
                            xml,
                            "\n      <skipped message=\"{}\"/>",
                            escape(&result.detail)
                        );
                    }
                }
                let _ = writeln!(
                    xml,
                    "\n      <system-out>{}\nrule: {}</system-out>\n    </testcase>",
                    escape(&result.detail),
                    escape(rule)
                );
            }
            xml.push_str("  </testsuite>\n");
        }
        xml.push_str("</testsuites>\n");
        xml
    }
}

/// Text for an XML attribute or element: the five characters XML reserves
/// escaped, and control characters other than tab and newline (which XML
/// 1.0 cannot carry) replaced.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The line before an address's results.
pub fn render_header(config: &CheckConfig, addr: SocketAddr) -> String {
    let bound: Duration = config.checks.iter().map(|c| c.bound(config.timeout)).sum();
    format!(
        "checking {} echo at {addr}: {} check{}, each step waiting at most {} (all: at most {})",
        config.transport,
        config.checks.len(),
        if config.checks.len() == 1 { "" } else { "s" },
        fmt_duration(config.timeout),
        fmt_duration(bound)
    )
}

/// Width of the name column: the longest check name.
const NAME_WIDTH: usize = 22;

/// One check's line: outcome, name, what was measured, and the defect.
pub fn render_line(result: &CheckResult) -> String {
    let mut line = format!(
        "{}  {:<NAME_WIDTH$}  {}",
        result.outcome.label(),
        result.name,
        result.detail
    );
    if result.outcome == Outcome::Fail {
        let rule = rule_of(result.name);
        if !rule.is_empty() {
            let _ = write!(line, " ({})", cited(rule));
        }
    }
    if let Some(defect) = result.defect {
        let _ = write!(line, " [{}]", defect.name());
    }
    line
}

/// `--list`: each check with its transport and reason.
pub fn render_list() -> String {
    let mut text = String::new();
    for check in CHECKS {
        let steps = match check.waits {
            1 => String::new(),
            n => format!(" ({n} steps)"),
        };
        let strict = if check.strict { " (--strict)" } else { "" };
        let _ = writeln!(
            text,
            "{:<NAME_WIDTH$}  {}  {}{steps}{strict}",
            check.name, check.transport, check.reason
        );
        let _ = writeln!(text, "{:<NAME_WIDTH$}       rule: {}", "", check.rule);
    }
    text.push_str(
        "\nTCP checks run by default, UDP checks with --udp; --strict adds the checks marked\n\
         so; --only NAME... picks some. Each step waits at most --timeout for the server.\n",
    );
    text
}

/// A byte count as people read it: `31 bytes`, `64 KiB`, `1.5 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    match n {
        1 => "1 byte".into(),
        n if n < 10 * KIB => format!("{n} bytes"),
        n if n < MIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n if n < MIB => format!("{:.1} KiB", n as f64 / KIB as f64),
        n if n % MIB == 0 => format!("{} MiB", n / MIB),
        n => format!("{:.1} MiB", n as f64 / MIB as f64),
    }
}

/// A duration as people read it: `0.21 ms`, `4.2 ms`, `310 ms`, `2.5 s`.
pub fn fmt_duration(time: Duration) -> String {
    let ms = time.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if time.subsec_millis() == 0 {
        format!("{} s", time.as_secs())
    } else {
        format!("{:.1} s", time.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(fmt_bytes(0), "0 bytes");
        assert_eq!(fmt_bytes(1), "1 byte");
        assert_eq!(fmt_bytes(256), "256 bytes");
        assert_eq!(fmt_bytes(64 * 1024), "64 KiB");
        assert_eq!(fmt_bytes(1024 * 1024), "1 MiB");
        assert_eq!(fmt_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_micros(210)), "0.21 ms");
        assert_eq!(fmt_duration(Duration::from_micros(4200)), "4.2 ms");
        assert_eq!(fmt_duration(Duration::from_millis(310)), "310 ms");
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(fmt_duration(Duration::from_millis(2500)), "2.5 s");
    }

    fn report(outcomes: &[Outcome], unreachable: bool) -> Report {
        let results = outcomes
            .iter()
            .map(|&outcome| CheckResult {
                name: "echo",
                outcome,
                detail: "31 bytes came back exact".into(),
                defect: (outcome == Outcome::Fail).then_some(Defect::NeverReplying),
                elapsed: Duration::from_millis(2),
                figures: vec![("bytes_sent", 31.into())],
            })
            .collect();
        Report {
            target: "localhost:7".into(),
            transport: Transport::Tcp,
            timeout: Duration::from_secs(5),
            clients: 50,
            addresses: vec![AddressReport {
                addr: "127.0.0.1:7".parse().unwrap(),
                unreachable: unreachable.then(|| "connection refused".into()),
                results,
            }],
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn exit_code_follows_the_worst_result() {
        assert_eq!(
            report(&[Outcome::Pass, Outcome::Skip], false).exit_code(),
            0
        );
        assert_eq!(
            report(&[Outcome::Pass, Outcome::Fail], false).exit_code(),
            1
        );
        assert_eq!(report(&[Outcome::Skip], true).exit_code(), 2);
    }

    #[test]
    fn a_line_names_outcome_check_measure_and_defect() {
        let report = report(&[Outcome::Fail], false);
        let line = render_line(&report.addresses[0].results[0]);
        assert!(line.starts_with("FAIL  echo  "), "{line}");
        assert!(
            line.ends_with("31 bytes came back exact (RFC 862) [never-replying]"),
            "{line}"
        );
        let summary = report.render_summary();
        assert!(
            summary.contains("0 passed, 1 failed, 0 skipped (echo)"),
            "{summary}"
        );
    }

    #[test]
    fn json_has_every_result_and_figure() {
        let json = report(&[Outcome::Pass, Outcome::Fail], false).to_json();
        assert_eq!(json["summary"]["exit_code"], 1);
        assert_eq!(json["summary"]["failed"], 1);
        let checks = json["addresses"][0]["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0]["outcome"], "pass");
        assert_eq!(checks[0]["defect"], Value::Null);
        assert_eq!(checks[1]["defect"], "never-replying");
        assert_eq!(checks[1]["figures"]["bytes_sent"], 31);
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(
            escape("a<b>&\"c'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{fffd}\n"
        );
    }

    #[test]
    fn junit_marks_failures_and_skips() {
        let xml = report(&[Outcome::Pass, Outcome::Fail, Outcome::Skip], false).to_junit();
        assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
        assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
        assert!(xml.contains("type=\"never-replying\""), "{xml}");
        assert_eq!(xml.matches("<skipped ").count(), 1, "{xml}");
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{xml}"
        );
    }

    /// An address that could not be reached leaves its checks not run:
    /// errors in the report, so that a CI system reading only the XML does
    /// not count the run as passed.
    #[test]
    fn junit_counts_an_unreachable_address_as_errors() {
        let xml = report(&[Outcome::Skip, Outcome::Skip], true).to_junit();
        assert_eq!(xml.matches("<error ").count(), 2, "{xml}");
        assert_eq!(xml.matches("<skipped ").count(), 0, "{xml}");
        assert!(
            xml.contains("tests=\"2\" failures=\"0\" skipped=\"0\" errors=\"2\""),
            "{xml}"
        );
    }

    #[test]
    fn the_list_gives_every_check_a_reason() {
        let list = render_list();
        for check in CHECKS {
            assert!(list.contains(check.name) && list.contains(check.reason));
        }
    }
}
