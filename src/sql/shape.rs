//! The whole user schema as the catalog describes it, object by object: relations with their
//! columns (type, nullability, default, identity), constraints (with whether they are
//! validated), indexes (with `indisvalid`: pg_dump leaves invalid ones out, the catalog does
//! not), view and function definitions, policies and row-level security, triggers, sequences,
//! enum labels, domains, extensions and schemas. Read with the same queries on two databases of
//! the same major, equal shapes mean equal schemas: this is how a replay on a copy of the
//! baseline proves where a migration stopped, and how a drafted repair proves its result.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

/// Every object's facts, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    objects: BTreeMap<String, BTreeSet<String>>,
    /// Each object's raw key, `schema \x1f name` (unquoted), the key a scope is made of.
    raw: BTreeMap<String, String>,
}

/// The migration tool's own tables (`<table>` and anything named `<table>…` in its schema,
/// such as knex's lock table) are not part of what a migration changes.
#[derive(Debug, Clone)]
pub struct Exclude {
    pub schema: String,
    pub table_prefix: String,
}

const NS: &str = "n.nspname <> ALL ('{pg_catalog,information_schema}') AND n.nspname !~ '^pg_(toast|temp)'";

fn query() -> String {
    format!(
        "WITH rels AS (\
           SELECT c.oid, c.relkind, format('%s %I.%I', CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' \
                  WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' WHEN 'c' THEN 'type' ELSE 'table' END, n.nspname, c.relname) AS obj, \
                  n.nspname || chr(31) || c.relname AS raw \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {NS} AND ($3::text[] IS NULL OR (n.nspname || chr(31) || c.relname) = ANY ($3::text[])) \
             AND NOT (n.nspname = $1 AND left(c.relname, length($2)) = $2) \
             AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
             AND NOT (c.relkind = 'c' AND EXISTS (SELECT FROM pg_type t JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' WHERE t.typrelid = c.oid))) \
         SELECT r.obj, r.raw, concat_ws(' ', 'kind', c.relkind::text, CASE WHEN c.relrowsecurity THEN 'row-level-security' END, \
                CASE WHEN c.relforcerowsecurity THEN 'forced' END, CASE WHEN c.relpersistence = 'u' THEN 'unlogged' END, \
                CASE WHEN c.relispartition THEN 'partition ' || pg_get_expr(c.relpartbound, c.oid) END, \
                CASE WHEN c.relkind = 'p' THEN 'partitioned by ' || pg_get_partkeydef(c.oid) END) \
           FROM rels r JOIN pg_class c ON c.oid = r.oid \
         UNION ALL \
         SELECT r.obj, r.raw, format('column %s %I %s%s%s%s%s', row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname, \
                format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, \
                coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), \
                CASE a.attidentity WHEN 'a' THEN ' identity always' WHEN 'd' THEN ' identity by default' ELSE '' END, \
                CASE WHEN a.attgenerated = 's' THEN ' generated' ELSE '' END) \
           FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped \
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         UNION ALL \
         SELECT r.obj, r.raw, format('constraint %I %s%s', k.conname, pg_get_constraintdef(k.oid), CASE WHEN k.convalidated THEN '' ELSE ' (not validated)' END) \
           FROM rels r JOIN pg_constraint k ON k.conrelid = r.oid \
         UNION ALL \
         SELECT r.obj, r.raw, format('index %s%s: %s', i.relname, CASE WHEN x.indisvalid THEN '' ELSE ' INVALID' END, pg_get_indexdef(x.indexrelid)) \
           FROM rels r JOIN pg_index x ON x.indrelid = r.oid JOIN pg_class i ON i.oid = x.indexrelid \
         UNION ALL \
         SELECT r.obj, r.raw, format('policy %I for %s %s to %s using (%s) with check (%s)', p.polname, p.polcmd, \
                CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, \
                CASE WHEN p.polroles = '{{0}}' THEN 'public' ELSE array_to_string(ARRAY(SELECT quote_ident(rolname) FROM pg_roles WHERE oid = ANY (p.polroles) ORDER BY 1), ',') END, \
                coalesce(pg_get_expr(p.polqual, p.polrelid), ''), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')) \
           FROM rels r JOIN pg_policy p ON p.polrelid = r.oid \
         UNION ALL \
         SELECT r.obj, r.raw, 'trigger ' || pg_get_triggerdef(t.oid) FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal \
         UNION ALL \
         SELECT r.obj, r.raw, 'definition ' || pg_get_viewdef(r.oid) FROM rels r WHERE r.relkind IN ('v', 'm') \
         UNION ALL \
         SELECT r.obj, r.raw, format('sequence %s start %s increment %s min %s max %s cycle %s', format_type(s.seqtypid, NULL), \
                s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle) \
           FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid \
         UNION ALL \
         SELECT format('type %I.%I', n.nspname, t.typname), n.nspname || chr(31) || t.typname, CASE t.typtype \
                WHEN 'e' THEN 'enum ' || array_to_string(ARRAY(SELECT quote_literal(e.enumlabel) FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), ', ') \
                ELSE format('domain %s%s%s', format_type(t.typbasetype, t.typtypmod), CASE WHEN t.typnotnull THEN ' not null' ELSE '' END, coalesce(' default ' || t.typdefault, '')) END \
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
          WHERE t.typtype IN ('e', 'd') AND {NS} AND ($3::text[] IS NULL OR (n.nspname || chr(31) || t.typname) = ANY ($3::text[])) \
            AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') \
         UNION ALL \
         SELECT format('type %I.%I', n.nspname, t.typname), n.nspname || chr(31) || t.typname, format('constraint %I %s', k.conname, pg_get_constraintdef(k.oid)) \
           FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid JOIN pg_namespace n ON n.oid = t.typnamespace \
          WHERE {NS} AND ($3::text[] IS NULL OR (n.nspname || chr(31) || t.typname) = ANY ($3::text[])) \
         UNION ALL \
         SELECT format('function %I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), n.nspname || chr(31) || p.proname, \
                'definition ' || md5(pg_get_functiondef(p.oid)) \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE p.prokind IN ('f', 'p') AND {NS} AND ($3::text[] IS NULL OR (n.nspname || chr(31) || p.proname) = ANY ($3::text[])) \
            AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e') \
         UNION ALL \
         SELECT format('extension %I', e.extname), chr(31) || e.extname, 'installed' FROM pg_extension e WHERE ($3::text[] IS NULL OR (chr(31) || e.extname) = ANY ($3::text[])) \
         UNION ALL \
         SELECT format('schema %I', n.nspname), n.nspname || chr(31), 'exists' FROM pg_namespace n WHERE {NS} AND ($3::text[] IS NULL OR (n.nspname || chr(31)) = ANY ($3::text[]))"
    )
}

impl Shape {
    /// Reads the shape of the session's database; names in definitions are spelled as the
    /// session's search path resolves them, so both sides must share one.
    pub async fn read(c: &Client, exclude: &Exclude) -> Result<Shape, tokio_postgres::Error> {
        Self::read_in(c, exclude, None).await
    }

    /// Only the objects whose raw keys are in `scope` (cheap; a subset of the whole shape's
    /// facts, so a difference here is a difference there).
    pub async fn read_in(
        c: &Client,
        exclude: &Exclude,
        scope: Option<&[String]>,
    ) -> Result<Shape, tokio_postgres::Error> {
        let scope: Option<Vec<String>> = scope.map(<[String]>::to_vec);
        let rows = c.query(&query(), &[&exclude.schema, &exclude.table_prefix, &scope]).await?;
        let mut shape = Shape::default();
        for r in rows {
            let (obj, raw, fact): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            shape.raw.insert(obj.clone(), raw);
            shape.objects.entry(obj).or_default().insert(fact);
        }
        Ok(shape)
    }

    /// The raw keys of the objects in which `self` and `other` differ.
    pub fn differing_keys(&self, other: &Shape) -> Vec<String> {
        let names: BTreeSet<&String> = self.objects.keys().chain(other.objects.keys()).collect();
        names
            .into_iter()
            .filter(|n| self.objects.get(*n) != other.objects.get(*n))
            .filter_map(|n| self.raw.get(n).or_else(|| other.raw.get(n)).cloned())
            .collect()
    }

    /// The part of this shape inside `scope` (what `read_in` with that scope would read).
    pub fn restricted(&self, scope: &[String]) -> Shape {
        let keep = |obj: &String| self.raw.get(obj).is_some_and(|r| scope.contains(r));
        Shape {
            objects: self
                .objects
                .iter()
                .filter(|(o, _)| keep(o))
                .map(|(o, f)| (o.clone(), f.clone()))
                .collect(),
            raw: self.raw.iter().filter(|(o, _)| keep(o)).map(|(o, r)| (o.clone(), r.clone())).collect(),
        }
    }

    /// The objects whose facts differ, with what each side has: `(object, only here, only there)`.
    pub fn differences(&self, other: &Shape) -> Vec<(String, Vec<String>, Vec<String>)> {
        let empty = BTreeSet::new();
        let names: BTreeSet<&String> = self.objects.keys().chain(other.objects.keys()).collect();
        names
            .into_iter()
            .filter_map(|n| {
                let (a, b) = (self.objects.get(n).unwrap_or(&empty), other.objects.get(n).unwrap_or(&empty));
                (a != b).then(|| {
                    (n.clone(), a.difference(b).cloned().collect(), b.difference(a).cloned().collect())
                })
            })
            .collect()
    }

    /// `(table object, index name)` of every invalid index (the bare name, unquoted).
    pub fn invalid_indexes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (obj, facts) in &self.objects {
            for f in facts {
                if let Some((head, _)) = f.strip_prefix("index ").and_then(|r| r.split_once(" INVALID: ")) {
                    out.push((obj.clone(), head.to_string()));
                }
            }
        }
        out
    }

    /// The same shape without the invalid index named `index` (its name as the catalog has it).
    pub fn without_invalid_index(&self, index: &str) -> Shape {
        let prefix = format!("index {index} INVALID: ");
        let mut s = self.clone();
        for facts in s.objects.values_mut() {
            facts.retain(|f| !f.starts_with(&prefix));
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Differences as lines for a report: `table public."Session": here has …; there has …`.
pub fn describe_differences(
    diff: &[(String, Vec<String>, Vec<String>)],
    here: &str,
    there: &str,
) -> Vec<String> {
    diff.iter()
        .map(|(obj, a, b)| {
            let mut s = obj.clone();
            if !a.is_empty() {
                s.push_str(&format!("; {here} has: {}", a.join(" | ")));
            }
            if !b.is_empty() {
                s.push_str(&format!("; {there} has: {}", b.join(" | ")));
            }
            s
        })
        .collect()
}
