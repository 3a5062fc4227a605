//! `--only` runs update BENCHMARKS.md in place: the sections they measured
//! replace the old ones (each marked with the run it comes from), every other
//! section stays as the last run wrote it, and the targets table takes the new
//! figures where there are some. The file stays generated: nothing in it is
//! written by hand.

/// The heading of the targets table (see `report::standing`).
const STANDING: &str = "## Where we stand against the targets";
/// The status of a row of the targets table whose measurement did not run
/// (`report::status(None)`).
const NOT_MEASURED: &str = "| not measured |";

/// One `## ` section: its heading line and the lines after it.
struct Section<'a> {
    heading: &'a str,
    body: Vec<&'a str>,
}

/// The lines before the first section, and the sections.
fn split(doc: &str) -> (Vec<&str>, Vec<Section<'_>>) {
    let mut preamble = Vec::new();
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in doc.lines() {
        if line.starts_with("## ") {
            sections.push(Section {
                heading: line,
                body: Vec::new(),
            });
        } else if let Some(section) = sections.last_mut() {
            section.body.push(line);
        } else {
            preamble.push(line);
        }
    }
    (preamble, sections)
}

/// A numbered measurement section (`## 8. Thread dump time`).
fn is_measurement(heading: &str) -> bool {
    heading
        .strip_prefix("## ")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// `old` with the measurement sections of `new` (a partial run described by
/// `run`, e.g. "`cargo xtask bench --only dump` on 2026-12-03 at commit abc1234")
/// in place of its own.
pub fn merge(old: &str, new: &str, run: &str) -> String {
    let (old_preamble, old_sections) = split(old);
    let (_, new_sections) = split(new);
    let measured: Vec<&Section<'_>> = new_sections
        .iter()
        .filter(|s| is_measurement(s.heading))
        .collect();
    let names: Vec<&str> = measured
        .iter()
        .map(|s| s.heading.trim_start_matches("## "))
        .collect();
    let mut out: Vec<String> = old_preamble
        .iter()
        .map(|l| l.to_string())
        .take_while(|l| !l.starts_with("Sections measured again"))
        .collect();
    trim_blank_end(&mut out);
    out.push(String::new());
    out.push(format!(
        "Sections measured again by {run}: {}. The others are from the run above.",
        names.join("; ")
    ));
    out.push(String::new());
    // Sections the old file lacks (a measurement added since) follow its last measurement.
    let mut added: Vec<&Section<'_>> = measured
        .iter()
        .copied()
        .filter(|new| !old_sections.iter().any(|old| old.heading == new.heading))
        .collect();
    let mut after_measurement = false;
    for section in &old_sections {
        let is_measured = is_measurement(section.heading);
        if after_measurement && !is_measured {
            added
                .drain(..)
                .for_each(|new| push_measured(&mut out, new, run));
        }
        after_measurement |= is_measured;
        let replacement = measured.iter().find(|s| s.heading == section.heading);
        match replacement {
            Some(new) => push_measured(&mut out, new, run),
            None if section.heading == STANDING => {
                out.push(section.heading.to_string());
                let new_table = new_sections.iter().find(|s| s.heading == STANDING);
                out.extend(standing(&section.body, new_table.map(|s| &s.body[..])));
            }
            None => {
                out.push(section.heading.to_string());
                out.extend(section.body.iter().map(|l| l.to_string()));
            }
        }
    }
    added
        .drain(..)
        .for_each(|new| push_measured(&mut out, new, run));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A section of the partial run `run`, marked as such.
fn push_measured(out: &mut Vec<String>, section: &Section<'_>, run: &str) {
    out.push(section.heading.to_string());
    out.push(String::new());
    out.push(format!("This section comes from {run}."));
    out.extend(section.body.iter().map(|l| l.to_string()));
}

/// The old targets table, with each row the partial run measured taken from it, and its
/// measured rows the old table lacks (a target added since) at the end. Every run writes
/// every target, measured or not, so an old row the new table lacks is a target since
/// renamed or retired: it is left out.
fn standing(old: &[&str], new: Option<&[&str]>) -> Vec<String> {
    let target = |row: &str| {
        row.split('|')
            .nth(1)
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let measured = |r: &&&str| r.starts_with("| ") && !r.trim_end().ends_with(NOT_MEASURED);
    let retired = |row: &&&str| {
        row.starts_with("| ")
            && new.is_some_and(|rows| {
                rows.iter().any(|r| r.starts_with("| "))
                    && !rows.iter().any(|r| target(r) == target(row))
            })
    };
    let mut table: Vec<String> = old
        .iter()
        .filter(|row| !retired(row))
        .map(|row| {
            let fresh = new.and_then(|rows| {
                rows.iter()
                    .filter(measured)
                    .find(|r| target(r) == target(row))
            });
            fresh.unwrap_or(row).to_string()
        })
        .collect();
    let added: Vec<String> = new
        .unwrap_or_default()
        .iter()
        .filter(measured)
        .filter(|r| {
            !old.iter()
                .any(|row| row.starts_with("| ") && target(row) == target(r))
        })
        .map(|r| r.to_string())
        .collect();
    let end = table
        .iter()
        .rposition(|l| l.starts_with("| "))
        .map_or(table.len(), |last| last + 1);
    table.splice(end..end, added);
    table
}

fn trim_blank_end(lines: &mut Vec<String>) {
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "# t\n\nWritten by full.\n\n## Where we stand against the targets\n\n| target | measured | status |\n|---|---|---|\n| a | 1 | met |\n| b | 2 | met |\n\n## 1. A\n\nold a\n\n## 2. B\n\nold b\n\n## How the runs are made\n\nrules\n";
    const NEW: &str = "# t\n\nWritten by partial.\n\n## Where we stand against the targets\n\n| target | measured | status |\n|---|---|---|\n| a | – s for – stacks | not measured |\n| b | 3 | **not met** |\n\n## 2. B\n\nnew b\n\n## How the runs are made\n\nrules\n";

    #[test]
    fn measured_sections_replace_old_ones_and_the_rest_stays() {
        let merged = merge(OLD, NEW, "`bench --only b`");
        assert!(merged.contains("Written by full."));
        assert!(merged.contains("Sections measured again by `bench --only b`: 2. B."));
        assert!(merged.contains("old a"));
        assert!(!merged.contains("old b"));
        assert!(merged.contains("This section comes from `bench --only b`.\n\nnew b"));
        assert!(merged.contains("| a | 1 | met |"));
        assert!(merged.contains("| b | 3 | **not met** |"));
        // Merging again replaces the note instead of adding another.
        let twice = merge(&merged, NEW, "`bench --only b` again");
        assert_eq!(twice.matches("Sections measured again").count(), 1);
        assert_eq!(twice.matches("This section comes from").count(), 1);
    }

    #[test]
    fn a_new_section_follows_the_last_measurement_and_its_target_ends_the_table() {
        let new = "# t\n\n## Where we stand against the targets\n\n| target | measured | status |\n|---|---|---|\n| a | – | not measured |\n| b | – | not measured |\n| c | 9 | met |\n\n## 10. C\n\nnew c\n\n## How the runs are made\n\nrules\n";
        let merged = merge(OLD, new, "`bench --only c`");
        assert!(merged.contains("| b | 2 | met |\n| c | 9 | met |\n\n## 1. A"));
        assert!(merged.contains(
            "old b\n\n## 10. C\n\nThis section comes from `bench --only c`.\n\nnew c\n\n## How the runs"
        ));
        // Once there, it is replaced like any other.
        let again = merge(&merged, new, "`bench --only c` again");
        assert_eq!(again.matches("## 10. C").count(), 1);
        assert_eq!(again.matches("| c | 9 | met |").count(), 1);
    }

    #[test]
    fn a_target_the_new_table_lacks_is_retired() {
        // Target b renamed b2: its old row goes, the new one ends the table.
        let new = "# t\n\n## Where we stand against the targets\n\n| target | measured | status |\n|---|---|---|\n| a | – | not measured |\n| b2 | 4 | met |\n\n## 2. B\n\nnew b\n\n## How the runs are made\n\nrules\n";
        let merged = merge(OLD, new, "`bench --only b`");
        assert!(merged.contains("| a | 1 | met |\n| b2 | 4 | met |\n\n## 1. A"));
        assert!(!merged.contains("| b | 2 | met |"));
    }
}
