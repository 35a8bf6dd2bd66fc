//! `/etc/exports` editing: pgset owns one block per cluster between marker comments naming the
//! cluster's namespace and name; every byte outside it (other lines, other clusters' blocks) is
//! kept as it was.

use std::ops::Range;

use pgset_spec::ClusterSpec;

use crate::clients::ExportClient;

/// Export options pgset writes: read-write, synchronous (PostgreSQL needs its fsyncs to reach
/// the disk), no subtree checking, root squashed (the data belongs to the postgres uid).
pub const EXPORT_OPTIONS: &str = "rw,sync,no_subtree_check,root_squash";

fn begin_marker_prefix(id: &str) -> String {
    format!("# BEGIN pgset cluster {id}:")
}

fn end_marker(id: &str) -> String {
    format!("# END pgset cluster {id}")
}

/// The identities whose markers delimit this cluster's block: `<namespace>/<name>`, and for the
/// default cluster also the name alone, which earlier versions wrote (so an upgrade replaces
/// that block instead of leaving it beside the new one).
fn block_ids(spec: &ClusterSpec) -> Vec<String> {
    let mut ids = vec![spec.exports_block_id()];
    if spec.is_default_cluster() {
        ids.push(spec.name.clone());
    }
    ids
}

/// The block pgset owns in `/etc/exports` for this cluster, each line ending in a newline. It
/// exports the cluster's own directory ([`ClusterSpec::cluster_export_dir`]).
pub fn render_block(spec: &ClusterSpec, clients: &[ExportClient]) -> String {
    let id = spec.exports_block_id();
    let mut line = spec.cluster_export_dir().display().to_string();
    for c in clients {
        line.push_str(&format!(" {c}({EXPORT_OPTIONS})"));
    }
    format!(
        "{} managed by pgset; edits inside this block are replaced\n{line}\n{}\n",
        begin_marker_prefix(&id),
        end_marker(&id)
    )
}

/// One export entry of the file (a logical line, continuation lines joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// 1-based number of the entry's first line.
    pub line: usize,
    /// The exported path, unquoted.
    pub path: String,
    /// Each client with its options (default `-options` folded in).
    pub clients: Vec<(String, Vec<String>)>,
    /// Whether the entry is inside pgset's block for the cluster the file was parsed for.
    pub in_block: bool,
}

/// An `/etc/exports` file split around pgset's block for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportsFile {
    text: String,
    block: Option<Range<usize>>,
    entries: Vec<ExportEntry>,
}

/// A logical line: its first physical line number, its byte range, and the joined text.
struct LogicalLine {
    line: usize,
    range: Range<usize>,
    text: String,
}

fn logical_lines(text: &str) -> Vec<LogicalLine> {
    let mut out: Vec<LogicalLine> = Vec::new();
    let mut offset = 0;
    let mut continued = false;
    for (i, phys) in text.split_inclusive('\n').enumerate() {
        let range = offset..offset + phys.len();
        offset += phys.len();
        let body = phys.strip_suffix('\n').unwrap_or(phys);
        let body = body.strip_suffix('\r').unwrap_or(body);
        let (content, continues) = match body.strip_suffix('\\') {
            Some(c) if !is_in_comment(c) => (c, true),
            _ => (body, false),
        };
        if continued {
            let last = out.last_mut().expect("a continued line has a predecessor");
            last.range.end = range.end;
            last.text.push(' ');
            last.text.push_str(content);
        } else {
            out.push(LogicalLine {
                line: i + 1,
                range,
                text: content.to_string(),
            });
        }
        continued = continues;
    }
    out
}

/// Whether the end of `s` is inside a `#` comment (outside double quotes).
fn is_in_comment(s: &str) -> bool {
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return true,
            _ => {}
        }
    }
    false
}

fn strip_comment(s: &str) -> &str {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &s[..i],
            _ => {}
        }
    }
    s
}

/// Splits an entry into words: whitespace-separated, double quotes group, `\NNN` octal
/// escapes decoded.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' => {
                let digits: String = (0..3)
                    .filter_map(|_| chars.next_if(char::is_ascii_digit))
                    .collect();
                match u8::from_str_radix(&digits, 8) {
                    Ok(b) if digits.len() == 3 => cur.push(b as char),
                    _ => {
                        cur.push('\\');
                        cur.push_str(&digits);
                    }
                }
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

fn parse_entry(line: usize, text: &str, in_block: bool) -> Option<ExportEntry> {
    let words = words(strip_comment(text));
    let (path, rest) = words.split_first()?;
    let mut defaults: Vec<String> = Vec::new();
    let mut clients = Vec::new();
    for w in rest {
        if let Some(opts) = w.strip_prefix('-') {
            defaults = opts.split(',').map(String::from).collect();
            continue;
        }
        let (client, opts) = match w.split_once('(') {
            Some((c, o)) => (
                c.to_string(),
                o.trim_end_matches(')')
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (w.clone(), defaults.clone()),
        };
        clients.push((client, opts));
    }
    Some(ExportEntry {
        line,
        path: path.clone(),
        clients,
        in_block,
    })
}

impl ExportsFile {
    /// Splits `text` around the block of `spec`'s cluster (other clusters' blocks are outside
    /// lines). The error is the problem in words: a begin marker without an end, an end without
    /// a begin, or two blocks.
    pub fn parse(text: &str, spec: &ClusterSpec) -> Result<ExportsFile, String> {
        let ids = block_ids(spec);
        let cluster = spec.exports_block_id();
        let begins: Vec<String> = ids.iter().map(|id| begin_marker_prefix(id)).collect();
        let ends: Vec<String> = ids.iter().map(|id| end_marker(id)).collect();
        let end = &ends[0];
        let mut block: Option<Range<usize>> = None;
        let mut open: Option<(usize, usize)> = None;
        let mut entries = Vec::new();
        for l in logical_lines(text) {
            let marker = l.text.trim_end();
            if begins.iter().any(|b| marker.starts_with(b.as_str())) {
                if let Some((line, _)) = open {
                    return Err(format!(
                        "pgset's block for cluster {cluster} opened on line {line} is opened again on line {} before its end marker",
                        l.line
                    ));
                }
                if block.is_some() {
                    return Err(format!(
                        "a second block for cluster {cluster} starts on line {}",
                        l.line
                    ));
                }
                open = Some((l.line, l.range.start));
                continue;
            }
            if ends.iter().any(|e| marker == e) {
                match open.take() {
                    Some((_, start)) => block = Some(start..l.range.end),
                    None => {
                        return Err(format!(
                            "line {} ends pgset's block for cluster {cluster}, but no block was opened",
                            l.line
                        ));
                    }
                }
                continue;
            }
            if let Some(e) = parse_entry(l.line, &l.text, open.is_some()) {
                entries.push(e);
            }
        }
        if let Some((line, _)) = open {
            return Err(format!(
                "pgset's block for cluster {cluster} opened on line {line} has no end marker `{end}`"
            ));
        }
        Ok(ExportsFile {
            text: text.to_string(),
            block,
            entries,
        })
    }

    /// Whether the file has the cluster's block.
    pub fn has_block(&self) -> bool {
        self.block.is_some()
    }

    /// The export entries of the file (comments and blank lines left out).
    pub fn entries(&self) -> &[ExportEntry] {
        &self.entries
    }

    /// The clients pgset's block gives `path` (a rerun without `--clients` keeps them).
    /// Entries pgset would not write (host names, wildcards) are left out.
    pub fn block_clients(&self, path: &str) -> Vec<ExportClient> {
        let wanted = path.trim_end_matches('/');
        let mut out: Vec<ExportClient> = self
            .entries
            .iter()
            .filter(|e| e.in_block && e.path.trim_end_matches('/') == wanted)
            .flat_map(|e| e.clients.iter())
            .filter_map(|(c, _)| ExportClient::from_exportfs(c))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Entries outside the block that export `path`.
    pub fn entries_outside_block_for(&self, path: &str) -> Vec<&ExportEntry> {
        let wanted = path.trim_end_matches('/');
        self.entries
            .iter()
            .filter(|e| !e.in_block && e.path.trim_end_matches('/') == wanted)
            .collect()
    }

    /// The file with the block replaced by `block` (or appended when there was none). Bytes
    /// outside the block are unchanged; when appending to a file whose last line lacks a
    /// newline, one is added, and a line left continued by a trailing `\` is closed with an
    /// empty line so the block stays separate.
    pub fn with_block(&self, block: &str) -> String {
        match &self.block {
            Some(r) => format!("{}{block}{}", &self.text[..r.start], &self.text[r.end..]),
            None => {
                let mut out = self.text.clone();
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                let last = out.strip_suffix('\n').unwrap_or(&out);
                let last = last.rsplit('\n').next().unwrap_or("");
                if last.ends_with('\\') && !is_in_comment(last) {
                    out.push('\n');
                }
                out.push_str(block);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::parse_clients;

    fn spec() -> ClusterSpec {
        ClusterSpec::default()
    }

    fn block() -> String {
        render_block(&spec(), &parse_clients("10.0.2.0/24,127.0.0.1").unwrap())
    }

    #[test]
    fn block_renders_markers_and_the_export_line() {
        let b = block();
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("# BEGIN pgset cluster default/pgset:"));
        assert_eq!(
            lines[1],
            "/nfsfileshare 10.0.2.0/24(rw,sync,no_subtree_check,root_squash) 127.0.0.1/32(rw,sync,no_subtree_check,root_squash)"
        );
        assert_eq!(lines[2], "# END pgset cluster default/pgset");
        assert!(b.ends_with('\n'));
    }

    #[test]
    fn empty_and_missing_files_get_just_the_block() {
        let f = ExportsFile::parse("", &spec()).unwrap();
        assert_eq!(f.with_block(&block()), block());
    }

    #[test]
    fn outside_lines_are_kept_byte_for_byte_and_rewrite_is_stable() {
        let original = "# /etc/exports: the access control list\n\
                        #\n\
                        /srv/homes  hostname1(rw,sync,no_subtree_check) \\\n\
                        \thostname2(ro,sync)\n\
                        \n\
                        /srv/a\t\"/srv/with space\"  # odd but legal\r\n\
                        /last *(ro)";
        let f = ExportsFile::parse(original, &spec()).unwrap();
        assert!(!f.has_block());
        let once = f.with_block(&block());
        assert!(once.starts_with(original));
        assert_eq!(&once[original.len()..original.len() + 1], "\n");
        assert_eq!(&once[original.len() + 1..], block());

        // Rewriting with another client list replaces only the block.
        let other = render_block(&spec(), &parse_clients("192.168.56.0/24").unwrap());
        let twice = ExportsFile::parse(&once, &spec())
            .unwrap()
            .with_block(&other);
        assert_eq!(&twice[..original.len() + 1], &once[..original.len() + 1]);
        assert!(twice.ends_with(&other));
        // The same block again changes nothing.
        let again = ExportsFile::parse(&twice, &spec())
            .unwrap()
            .with_block(&other);
        assert_eq!(again, twice);
    }

    #[test]
    fn block_in_the_middle_is_replaced_in_place() {
        let text = format!("/a 10.0.0.1(ro)\n{}# trailing comment\n/b *(ro)\n", block());
        let f = ExportsFile::parse(&text, &spec()).unwrap();
        assert!(f.has_block());
        let other = render_block(&spec(), &parse_clients("*").unwrap());
        let out = f.with_block(&other);
        assert_eq!(
            out,
            format!("/a 10.0.0.1(ro)\n{other}# trailing comment\n/b *(ro)\n")
        );
    }

    #[test]
    fn a_trailing_continuation_does_not_swallow_the_block() {
        let text = "/srv/x 10.0.0.1(ro) \\";
        let out = ExportsFile::parse(text, &spec())
            .unwrap()
            .with_block(&block());
        assert_eq!(out, format!("{text}\n\n{}", block()));
        let reparsed = ExportsFile::parse(&out, &spec()).unwrap();
        assert!(reparsed.has_block());
        let in_block: Vec<_> = reparsed.entries().iter().filter(|e| e.in_block).collect();
        assert_eq!(in_block.len(), 1);
        assert_eq!(in_block[0].path, "/nfsfileshare");
    }

    #[test]
    fn continuation_lines_and_quotes_are_parsed() {
        let text = "/srv/homes  -ro host1 \\\n  host2(rw,sync)\n\"/srv/with\\040space\" 10.0.0.0/8(rw)\n# /commented *(rw)\n";
        let f = ExportsFile::parse(text, &spec()).unwrap();
        let e = f.entries();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, 1);
        assert_eq!(e[0].path, "/srv/homes");
        assert_eq!(
            e[0].clients,
            vec![
                ("host1".to_string(), vec!["ro".to_string()]),
                (
                    "host2".to_string(),
                    vec!["rw".to_string(), "sync".to_string()]
                ),
            ]
        );
        assert_eq!(e[1].line, 3);
        assert_eq!(e[1].path, "/srv/with space");
    }

    #[test]
    fn the_blocks_clients_are_read_back() {
        let f = ExportsFile::parse(&format!("/nfsfileshare *(ro)\n{}", block()), &spec()).unwrap();
        assert_eq!(
            f.block_clients("/nfsfileshare"),
            parse_clients("127.0.0.1/32,10.0.2.0/24").unwrap()
        );
        assert!(f.block_clients("/other").is_empty());
        assert!(
            ExportsFile::parse("", &spec())
                .unwrap()
                .block_clients("/nfsfileshare")
                .is_empty()
        );
    }

    #[test]
    fn the_same_path_outside_the_block_is_found() {
        let text = format!(
            "/nfsfileshare/ *(rw,no_root_squash)\n/nfsfileshare2 *(ro)\n{}",
            block()
        );
        let f = ExportsFile::parse(&text, &spec()).unwrap();
        let outside = f.entries_outside_block_for("/nfsfileshare");
        assert_eq!(outside.len(), 1);
        assert_eq!(outside[0].line, 1);
    }

    #[test]
    fn other_clusters_blocks_are_outside_lines() {
        let mut other = spec();
        other.name = "pgset2".into();
        let text = format!(
            "{}{}",
            render_block(&other, &parse_clients("*").unwrap()),
            block()
        );
        let f = ExportsFile::parse(&text, &spec()).unwrap();
        assert_eq!(
            f.entries_outside_block_for("/nfsfileshare/default.pgset2")
                .len(),
            1
        );
        assert!(f.entries_outside_block_for("/nfsfileshare").is_empty());
        let replaced = f.with_block(&block());
        assert_eq!(replaced, text);
    }

    fn staging() -> ClusterSpec {
        ClusterSpec {
            namespace: "staging".into(),
            ..ClusterSpec::default()
        }
    }

    /// Writes `spec`'s block into `text` as the plan does.
    fn write(text: &str, spec: &ClusterSpec, clients: &str) -> String {
        ExportsFile::parse(text, spec)
            .unwrap()
            .with_block(&render_block(spec, &parse_clients(clients).unwrap()))
    }

    #[test]
    fn two_clusters_blocks_coexist_and_reruns_change_nothing() {
        let original = "/srv/legacy 10.0.0.1(ro)\n";
        let first = write(original, &spec(), "10.0.2.0/24");
        let both = write(&first, &staging(), "192.168.56.0/24");
        assert!(both.starts_with(&first), "the default block moved:\n{both}");
        let staging_block = &both[first.len()..];
        assert_eq!(
            staging_block,
            "# BEGIN pgset cluster staging/pgset: managed by pgset; edits inside this block are replaced\n\
             /nfsfileshare/staging.pgset 192.168.56.0/24(rw,sync,no_subtree_check,root_squash)\n\
             # END pgset cluster staging/pgset\n"
        );
        // Each cluster sees its own block and its own export, and a rerun of either (in any
        // order) leaves the file as it is.
        for (s, path, clients) in [
            (spec(), "/nfsfileshare", "10.0.2.0/24"),
            (staging(), "/nfsfileshare/staging.pgset", "192.168.56.0/24"),
        ] {
            let f = ExportsFile::parse(&both, &s).unwrap();
            assert!(f.has_block());
            assert_eq!(f.block_clients(path), parse_clients(clients).unwrap());
            assert!(f.entries_outside_block_for(path).is_empty());
            assert_eq!(write(&both, &s, clients), both);
        }
        // Changing one cluster's clients leaves the other's block and every other line alone.
        let changed = write(&both, &staging(), "*");
        assert!(changed.starts_with(&first));
        assert_eq!(
            ExportsFile::parse(&changed, &spec())
                .unwrap()
                .block_clients("/nfsfileshare"),
            parse_clients("10.0.2.0/24").unwrap()
        );
    }

    #[test]
    fn the_default_clusters_earlier_block_is_replaced_in_place() {
        let earlier = "/a *(ro)\n\
                       # BEGIN pgset cluster pgset: managed by pgset; edits inside this block are replaced\n\
                       /nfsfileshare 10.0.2.0/24(rw,sync,no_subtree_check,root_squash)\n\
                       # END pgset cluster pgset\n\
                       /b *(ro)\n";
        let f = ExportsFile::parse(earlier, &spec()).unwrap();
        assert!(f.has_block());
        assert_eq!(
            f.block_clients("/nfsfileshare"),
            parse_clients("10.0.2.0/24").unwrap()
        );
        assert!(f.entries_outside_block_for("/nfsfileshare").is_empty());
        let upgraded = write(earlier, &spec(), "10.0.2.0/24");
        assert_eq!(
            upgraded,
            format!(
                "/a *(ro)\n{}/b *(ro)\n",
                render_block(&spec(), &parse_clients("10.0.2.0/24").unwrap())
            )
        );
        assert!(!upgraded.contains("cluster pgset:"), "{upgraded}");
        assert_eq!(write(&upgraded, &spec(), "10.0.2.0/24"), upgraded);
        // The earlier marker names no namespace: only the default cluster takes it as its own;
        // for `staging/pgset` it is someone else's lines.
        let f = ExportsFile::parse(earlier, &staging()).unwrap();
        assert!(!f.has_block());
        let with_staging = write(earlier, &staging(), "10.0.2.0/24");
        assert!(with_staging.starts_with(earlier));
        // An earlier block beside a current one is two blocks: refused, not guessed.
        let doubled = format!("{earlier}{}", block());
        assert!(
            ExportsFile::parse(&doubled, &spec())
                .unwrap_err()
                .contains("second block")
        );
    }

    #[test]
    fn broken_markers_are_reported() {
        let b = block();
        let (begin, rest) = b.split_once('\n').unwrap();
        let end = rest.lines().last().unwrap();
        let unterminated = format!("/a *(ro)\n{begin}\n/nfsfileshare *(rw)\n");
        assert!(
            ExportsFile::parse(&unterminated, &spec())
                .unwrap_err()
                .contains("line 2 has no end marker")
        );
        let stray_end = format!("/a *(ro)\n{end}\n");
        assert!(
            ExportsFile::parse(&stray_end, &spec())
                .unwrap_err()
                .contains("line 2 ends")
        );
        let doubled = format!("{b}{b}");
        assert!(
            ExportsFile::parse(&doubled, &spec())
                .unwrap_err()
                .contains("second block")
        );
    }
}
