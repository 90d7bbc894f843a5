//! Row counts read from pg_dump's own stream as it passes to the compressor: the custom
//! archive's header and table of contents name each TABLE DATA entry, and each data block is
//! that table's `COPY` text, one line per row, ending in `\.`. The manifest records the counts
//! so a restore drill can compare the restored copy with what was dumped, with no second scan
//! of the database. A stream this parser does not understand (a future archive version) gives
//! no counts — never a failed snapshot.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Rows of one table as dumped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: u64,
}

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// The lines `\.` and two empty ones that pg_dump writes after every table's rows.
const TERMINATOR_LINES: u64 = 3;
/// The head (header and TOC) is held in memory until it parses; none is anywhere near this.
const HEAD_CAP: usize = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Other,
    Blob,
}

enum Phase {
    /// Header and TOC, parsed from `head` once enough of it has arrived.
    Head,
    /// Between data blocks: the block type byte and its dump id.
    Block,
    /// A chunk length inside a block: a table's (counted), another entry's, or a large object's.
    ChunkLen {
        dump_id: i64,
        kind: Kind,
    },
    Chunk {
        dump_id: i64,
        kind: Kind,
        left: u64,
    },
    /// Inside a BLOBS block, before each object: its oid (0 ends the block).
    BlobOid,
    Failed,
}

pub struct RowCounter {
    phase: Phase,
    head: Vec<u8>,
    int_size: usize,
    tables: HashMap<i64, (String, String)>,
    newlines: HashMap<i64, u64>,
    order: Vec<i64>,
    seen: std::collections::HashSet<i64>,
    /// The head length at which to try parsing it again.
    next_try: usize,
}

/// Why the head could not be read yet (more bytes needed) or at all.
enum Short {
    More,
    Bad(&'static str),
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, Short> {
        let b = *self.buf.get(self.pos).ok_or(Short::More)?;
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<i64, Short> {
        let sign = self.byte()?;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            v |= (self.byte()? as i64) << (8 * i);
        }
        Ok(if sign != 0 { -v } else { v })
    }

    fn str(&mut self) -> Result<Option<String>, Short> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.pos + len as usize;
        let s = self.buf.get(self.pos..end).ok_or(Short::More)?;
        self.pos = end;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }
}

/// The TOC's TABLE DATA entries by dump id, and where the data begins; `Short::More` until the
/// whole head is in `buf`.
fn parse_head(buf: &[u8]) -> Result<(usize, HashMap<i64, (String, String)>, usize), Short> {
    if buf.len() >= 5 && &buf[..5] != b"PGDMP" {
        return Err(Short::Bad("not a pg_dump custom archive"));
    }
    let mut c = Cursor { buf, pos: 5, int_size: 4 };
    let (major, minor) = (c.byte()?, c.byte()?);
    let _rev = c.byte()?;
    let version = (major as u32) << 8 | minor as u32;
    if major != 1 || !(12..=16).contains(&minor) {
        return Err(Short::Bad("an archive version this parser does not know"));
    }
    c.int_size = c.byte()? as usize;
    let off_size = c.byte()? as usize;
    if c.byte()? != 1 || !(1..=8).contains(&c.int_size) || !(1..=8).contains(&off_size) {
        return Err(Short::Bad("not the custom format"));
    }
    if version >= 0x10f {
        c.byte()?; // compression algorithm
    } else {
        c.int()?; // compression level
    }
    for _ in 0..7 {
        c.int()?; // creation time
    }
    for _ in 0..3 {
        c.str()?; // database name, server and pg_dump versions
    }
    let count = c.int()?;
    let mut tables = HashMap::new();
    for _ in 0..count {
        let dump_id = c.int()?;
        c.int()?; // has a data dumper
        c.str()?; // table oid
        c.str()?; // oid
        let tag = c.str()?.unwrap_or_default();
        let desc = c.str()?.unwrap_or_default();
        c.int()?; // section
        for _ in 0..3 {
            c.str()?; // definition, drop and copy statements
        }
        let namespace = c.str()?.unwrap_or_default();
        c.str()?; // tablespace
        if version >= 0x10e {
            c.str()?; // table access method
        }
        if version >= 0x110 {
            c.int()?; // relkind
        }
        c.str()?; // owner
        c.str()?; // "false" (with oids)
        while c.str()?.is_some() {} // dependencies, ended by a NULL string
        c.byte()?; // data offset: flag…
        for _ in 0..off_size {
            c.byte()?; // …and its bytes
        }
        if desc == "TABLE DATA" {
            tables.insert(dump_id, (namespace, tag));
        }
    }
    Ok((c.pos, tables, c.int_size))
}

impl Default for RowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl RowCounter {
    pub fn new() -> RowCounter {
        RowCounter {
            phase: Phase::Head,
            head: Vec::new(),
            int_size: 4,
            tables: HashMap::new(),
            newlines: HashMap::new(),
            order: Vec::new(),
            seen: std::collections::HashSet::new(),
            next_try: 0,
        }
    }

    /// The next bytes of the archive, in order.
    pub fn feed(&mut self, data: &[u8]) {
        match self.phase {
            Phase::Failed => {}
            Phase::Head => {
                self.head.extend_from_slice(data);
                // Re-parsed from the start only when the head has doubled since the last try:
                // linear in the TOC's size, however small the reads.
                if self.head.len() < self.next_try {
                    return;
                }
                if self.head.len() > HEAD_CAP {
                    return self.fail("a table of contents over 1 GiB");
                }
                match parse_head(&self.head) {
                    Ok((end, tables, int_size)) => {
                        (self.tables, self.int_size) = (tables, int_size);
                        let rest = self.head.split_off(end);
                        self.head.clear();
                        self.phase = Phase::Block;
                        self.data(&rest);
                    }
                    Err(Short::More) => self.next_try = self.head.len() * 2,
                    Err(Short::Bad(why)) => self.fail(why),
                }
            }
            _ => self.data(data),
        }
    }

    fn fail(&mut self, why: &str) {
        tracing::debug!(why, "row counts not taken from the dump stream");
        self.phase = Phase::Failed;
        self.head = Vec::new();
    }

    /// How many bytes the field at hand needs: a block header, or an int.
    fn field_len(&self) -> usize {
        match self.phase {
            Phase::Block => 1 + 1 + self.int_size,
            _ => 1 + self.int_size,
        }
    }

    /// The data blocks: fields may straddle two feeds (kept in `head`), chunk bodies are counted
    /// where they lie.
    fn data(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if let Phase::Chunk { dump_id, kind, left } = self.phase {
                let n = (left as usize).min(data.len());
                if kind == Kind::Table {
                    *self.newlines.entry(dump_id).or_default() +=
                        memchr::memchr_iter(b'\n', &data[..n]).count() as u64;
                }
                data = &data[n..];
                let left = left - n as u64;
                self.phase = if left == 0 {
                    Phase::ChunkLen { dump_id, kind }
                } else {
                    Phase::Chunk { dump_id, kind, left }
                };
                continue;
            }
            if matches!(self.phase, Phase::Failed) {
                return;
            }
            let need = self.field_len() - self.head.len();
            let take = need.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() == self.field_len() {
                let field = std::mem::take(&mut self.head);
                self.field(&field);
            }
        }
    }

    /// One complete field: moves the state machine on.
    fn field(&mut self, f: &[u8]) {
        let int = |b: &[u8]| {
            let mut c = Cursor { buf: b, pos: 0, int_size: self.int_size };
            c.int().unwrap_or(-1)
        };
        self.phase = match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Block => {
                let dump_id = int(&f[1..]);
                match f[0] {
                    BLK_DATA if self.tables.contains_key(&dump_id) => {
                        if self.seen.insert(dump_id) {
                            self.order.push(dump_id);
                        }
                        Phase::ChunkLen { dump_id, kind: Kind::Table }
                    }
                    BLK_DATA => Phase::ChunkLen { dump_id, kind: Kind::Other },
                    BLK_BLOBS => Phase::BlobOid,
                    _ => return self.fail("an unknown data block type"),
                }
            }
            Phase::ChunkLen { dump_id, kind } => match int(f) {
                0 if kind == Kind::Blob => Phase::BlobOid,
                0 => Phase::Block,
                n if n > 0 => Phase::Chunk { dump_id, kind, left: n as u64 },
                _ => return self.fail("a negative chunk length"),
            },
            Phase::BlobOid => match int(f) {
                0 => Phase::Block,
                _ => Phase::ChunkLen { dump_id: -1, kind: Kind::Blob },
            },
            other => other,
        };
    }

    /// Each dumped table's rows, in dump order; None when the stream was not understood or
    /// ended inside the head or a block.
    pub fn finish(mut self) -> Option<Vec<TableRows>> {
        if matches!(self.phase, Phase::Head) {
            // The stream may have ended before the head doubled: one last parse.
            self.next_try = 0;
            self.feed(&[]);
        }
        if !matches!(self.phase, Phase::Block) || !self.head.is_empty() {
            return None;
        }
        let mut out: Vec<TableRows> = self
            .order
            .iter()
            .filter_map(|id| {
                let (schema, table) = self.tables.get(id)?.clone();
                let lines = self.newlines.get(id).copied().unwrap_or(0);
                Some(TableRows { schema, table, rows: lines.saturating_sub(TERMINATOR_LINES) })
            })
            .collect();
        // A table the TOC lists with data whose block is absent (none for a filtered dump).
        for (id, (schema, table)) in &self.tables {
            if !self.seen.contains(id) {
                out.push(TableRows { schema: schema.clone(), table: table.clone(), rows: 0 });
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Vec<u8> {
        let mut out = vec![u8::from(v < 0)];
        out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        out
    }

    fn str(s: Option<&str>) -> Vec<u8> {
        match s {
            None => int(-1),
            Some(s) => [int(s.len() as i64), s.as_bytes().to_vec()].concat(),
        }
    }

    /// A 1.14 archive (PostgreSQL 13-15) of one table `public.t` whose COPY data is `rows`.
    fn archive(rows: &str) -> Vec<u8> {
        let mut a = b"PGDMP".to_vec();
        a.extend([1, 14, 0, 4, 8, 1]);
        a.extend(int(0)); // compression level
        (0..7).for_each(|_| a.extend(int(0)));
        for s in ["db", "15.1", "15.1"] {
            a.extend(str(Some(s)));
        }
        a.extend(int(1));
        a.extend(int(7));
        a.extend(int(1));
        for s in [Some("0"), Some("0"), Some("t"), Some("TABLE DATA")] {
            a.extend(str(s));
        }
        a.extend(int(3));
        for s in
            [Some(""), Some(""), Some("COPY public.t (x) FROM stdin;\n"), Some("public"), Some(""), Some("")]
        {
            a.extend(str(s));
        }
        a.extend(str(Some("postgres")));
        a.extend(str(Some("false")));
        a.extend(str(Some("6")));
        a.extend(str(None));
        a.extend([1, 0, 0, 0, 0, 0, 0, 0, 0]);
        a.push(BLK_DATA);
        a.extend(int(7));
        let data = format!("{rows}\\.\n\n\n");
        a.extend(int(data.len() as i64));
        a.extend(data.as_bytes());
        a.extend(int(0));
        a
    }

    #[test]
    fn rows_are_counted_whatever_the_reads_and_a_head_that_ends_the_stream_still_parses() {
        let a = archive("1\n2\n3\\nstill 3\n");
        for size in [1, 3, 7, 64, a.len()] {
            let mut c = RowCounter::new();
            a.chunks(size).for_each(|ch| c.feed(ch));
            let got = c.finish().unwrap_or_else(|| panic!("reads of {size} bytes"));
            assert_eq!(
                got,
                [TableRows { schema: "public".into(), table: "t".into(), rows: 3 }],
                "reads of {size}"
            );
        }
        let mut cut = RowCounter::new();
        cut.feed(&a[..a.len() - 3]);
        assert_eq!(cut.finish(), None, "a stream that ends inside a block gives no counts");
        let mut other = RowCounter::new();
        other.feed(b"not an archive at all");
        assert_eq!(other.finish(), None);
    }
}
