//! Statement by statement: a migration that failed on a lock timeout half way, finished by the
//! drafted `finish` step to the schema the whole migration gives a fresh copy; and a table of
//! statement kinds, each applied in part, with the verdict `diagnose` gives every statement.

mod common;

use common::migrate::{self, schema_dump, Holder};
use common::*;

const INIT: &str = "20250101000000_init";
const INIT_SQL: &str = "-- CreateTable\nCREATE TABLE \"User\" (\n    \"id\" SERIAL NOT NULL,\n    \"name\" TEXT NOT NULL,\n    CONSTRAINT \"User_pkey\" PRIMARY KEY (\"id\")\n);\n";
const ORDERS: &str = "20250601000000_orders";
const ORDERS_SQL: &str = r#"-- CreateTable
CREATE TABLE "Order" (
    "id" SERIAL NOT NULL,
    "userId" INTEGER NOT NULL,
    "total" DECIMAL(65,30) NOT NULL,
    CONSTRAINT "Order_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "Order_userId_idx" ON "Order"("userId");

-- AlterTable
ALTER TABLE "User" ADD COLUMN "email" TEXT;

-- CreateEnum
CREATE TYPE "Status" AS ENUM ('open', 'paid');

-- AlterTable
ALTER TABLE "Order" ADD COLUMN "status" "Status" NOT NULL DEFAULT 'open';

-- AddForeignKey
ALTER TABLE "Order" ADD CONSTRAINT "Order_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
"#;

/// `schema` is the migrations' schema (Prisma's `?schema=`): the deploy's search path.
fn half_way_then_finish(schema: &str) {
    let db = TestDb::new("half");
    let opts = format!("-c search_path={schema}");
    db.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), INIT, INIT_SQL);
    migrate::write_migration(dir.path(), ORDERS, ORDERS_SQL);
    migrate::deploy(&db, dir.path(), INIT, &opts).unwrap();
    let pgm = migrate::config(&db, dir.path(), &format!("schema = \"{schema}\"\n"));
    pgm.snapshot("app");
    let log = {
        let _busy = Holder::lock(&db, &format!("{schema}.\"User\""), "User");
        migrate::deploy(&db, dir.path(), ORDERS, &format!("{opts} -c lock_timeout=300")).unwrap_err()
    };
    assert!(log.contains("55P03"), "{log}");

    let run = pgm.run(&["diagnose", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = &run.json()[0];
    assert_eq!(r["sqlstate"], "55P03", "{r:#}");
    let verdicts: Vec<(u64, &str)> = r["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["line"].as_u64().unwrap(), s["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (2, "applied"),
            (10, "applied"),
            (13, "not_applied"),
            (16, "not_applied"),
            (19, "not_applied"),
            (22, "not_applied")
        ],
        "{r:#}"
    );
    assert!(
        !r["playbooks"]["finish"]["notes"].to_string().contains("not transient"),
        "a lock timeout is transient: {r:#}"
    );
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(2)), "{r:#}");
    let finish = r["playbooks"]["finish"]["sql"].as_str().unwrap();
    assert!(
        finish.starts_with("ALTER TABLE \"User\" ADD COLUMN IF NOT EXISTS email text;\nDO $pgmedic$"),
        "{finish}"
    );

    let text = std::fs::read_to_string(&pgm.config).unwrap()
        + "\n"
        + r["playbooks"]["finish"]["toml"].as_str().unwrap();
    pgm.write_config(&text);
    let dry = pgm.run(&["repair", "--db", "app", "--dry-run", "--json"]).json();
    assert_eq!(
        dry["steps"][0]["params"]["sql"][0], "ALTER TABLE \"User\" ADD COLUMN IF NOT EXISTS email text",
        "--dry-run shows the SQL: {dry:#}"
    );
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(rec["steps"][0]["output"].as_str().unwrap().starts_with("ran 4 statement(s), proven first on a copy of the baseline; the schema now is the whole migration's:\nBEGIN;\nALTER TABLE \"User\" ADD COLUMN IF NOT EXISTS email text;"), "{rec:#}");

    let fresh = TestDb::new("fresh");
    fresh.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    migrate::deploy(&fresh, dir.path(), INIT, &opts).unwrap();
    migrate::deploy(&fresh, dir.path(), ORDERS, &opts).unwrap();
    assert_eq!(
        schema_dump(&db.name),
        schema_dump(&fresh.name),
        "finished = the whole migration on a fresh copy"
    );
    let rows = db.sql(&format!("SELECT count(*) FROM {schema}._prisma_migrations WHERE migration_name = '{ORDERS}' AND finished_at IS NOT NULL AND rolled_back_at IS NULL"));
    assert_eq!(rows, "1", "resolved as applied");
}

#[test]
fn a_lock_timeout_half_way_is_finished_to_what_the_whole_migration_gives() {
    half_way_then_finish("public");
}

#[test]
fn names_resolve_in_the_migrations_schema_as_prisma_resolves_them() {
    half_way_then_finish("tenant");
}

const BEFORE: &str = r#"
CREATE SCHEMA billing;
CREATE TABLE "Legacy" (id int);
CREATE TABLE "Legacy2" (id int);
CREATE TABLE billing."Invoice" (id int NOT NULL, "old col" text, amount int, note text, code varchar(10), total int DEFAULT 0, flag boolean, x int CONSTRAINT "Invoice_x_check" CHECK (x > 0), y int, z int);
CREATE TABLE "Doc" (id int NOT NULL, body text, code varchar(10), total int DEFAULT 0, note text, a int CONSTRAINT "Doc_a_check" CHECK (a > 0), b int);
CREATE INDEX "Invoice_note_idx" ON billing."Invoice"(note);
CREATE INDEX "Doc_note_idx" ON "Doc"(note);
CREATE TYPE "Mood" AS ENUM ('ok');
CREATE TABLE "Renamed1" (id int);
CREATE TABLE "Renamed2" (id int);
CREATE TABLE dups (v int);
INSERT INTO dups VALUES (1), (1);
"#;

/// Part one runs (each kind once), then a CONCURRENTLY index fails on duplicates and leaves an
/// invalid index, and part two (each kind again) never runs.
const MIXED: &str = r#"-- Part one: applied
CREATE TABLE billing."Line" ("id" SERIAL PRIMARY KEY, "invoiceId" INT NOT NULL);
DROP TABLE "Legacy";
ALTER TABLE billing."Invoice" ADD COLUMN "currency" TEXT;
ALTER TABLE billing."Invoice" DROP COLUMN "old col";
ALTER TABLE billing."Invoice" ALTER COLUMN "code" TYPE VARCHAR(20);
ALTER TABLE billing."Invoice" ALTER COLUMN "note" SET DEFAULT 'none';
ALTER TABLE billing."Invoice" ALTER COLUMN "total" DROP DEFAULT;
ALTER TABLE billing."Invoice" ALTER COLUMN "amount" SET NOT NULL;
ALTER TABLE billing."Invoice" ALTER COLUMN "id" DROP NOT NULL;
ALTER TABLE billing."Invoice" ADD CONSTRAINT "Invoice_pkey" PRIMARY KEY ("amount");
ALTER TABLE billing."Line" ADD CONSTRAINT "Line_invoiceId_fkey" FOREIGN KEY ("invoiceId") REFERENCES billing."Invoice"("amount");
ALTER TABLE billing."Invoice" ADD CONSTRAINT "Invoice_code_key" UNIQUE ("code");
ALTER TABLE billing."Invoice" ADD CONSTRAINT "Invoice_y_check" CHECK ("y" >= 0);
ALTER TABLE billing."Invoice" DROP CONSTRAINT "Invoice_x_check";
CREATE INDEX "Invoice_flag_idx" ON billing."Invoice"("flag");
DROP INDEX billing."Invoice_note_idx";
CREATE TYPE "Color" AS ENUM ('red', 'green');
ALTER TYPE "Mood" ADD VALUE 'happy';
CREATE SEQUENCE billing."invoice_no_seq";
ALTER TABLE "Renamed1" RENAME TO "RenamedA";
ALTER TABLE billing."Invoice" RENAME COLUMN "z" TO "zz";
CREATE EXTENSION IF NOT EXISTS "citext";
CREATE VIEW billing."open_invoices" AS SELECT "id" FROM billing."Invoice"; -- a comment after it
DO $$ BEGIN RAISE NOTICE 'a data fix; with a semicolon'; END $$;
INSERT INTO billing."Line" ("invoiceId") SELECT 1 WHERE false;
/* the failure: duplicates */
CREATE UNIQUE INDEX CONCURRENTLY "dups_v_key" ON "dups"("v");
-- Part two: never ran
CREATE TABLE "Page" ("id" INT);
DROP TABLE "Legacy2";
ALTER TABLE "Doc" ADD COLUMN "title" TEXT;
ALTER TABLE "Doc" DROP COLUMN "body";
ALTER TABLE "Doc" ALTER COLUMN "code" TYPE VARCHAR(20);
ALTER TABLE "Doc" ALTER COLUMN "note" SET DEFAULT 'none';
ALTER TABLE "Doc" ALTER COLUMN "total" DROP DEFAULT;
ALTER TABLE "Doc" ALTER COLUMN "b" SET NOT NULL;
ALTER TABLE "Doc" ALTER COLUMN "id" DROP NOT NULL;
ALTER TABLE "Doc" ADD CONSTRAINT "Doc_pkey" PRIMARY KEY ("id");
ALTER TABLE "Doc" ADD CONSTRAINT "Doc_b_fkey" FOREIGN KEY ("b") REFERENCES billing."Invoice"("amount");
ALTER TABLE "Doc" ADD CONSTRAINT "Doc_code_key" UNIQUE ("code");
ALTER TABLE "Doc" ADD CONSTRAINT "Doc_b_check" CHECK ("b" >= 0);
ALTER TABLE "Doc" DROP CONSTRAINT "Doc_a_check";
CREATE INDEX "Doc_b_idx" ON "Doc"("b");
DROP INDEX "Doc_note_idx";
CREATE TYPE "Shape" AS ENUM ('round');
ALTER TYPE "Mood" ADD VALUE 'sad';
CREATE SEQUENCE "doc_no_seq";
ALTER TABLE "Renamed2" RENAME TO "RenamedB";
ALTER TABLE "Doc" RENAME COLUMN "a" TO "aa";
CREATE EXTENSION IF NOT EXISTS "hstore";
CREATE VIEW "doc_view" AS SELECT "id" FROM "Doc";
"#;

#[test]
fn every_statement_kind_gets_its_verdict() {
    let db = TestDb::new("kinds");
    db.sql(BEFORE);
    let dir = tempfile::tempdir().unwrap();
    let name = "20250701000000_everything";
    migrate::write_migration(dir.path(), name, MIXED);
    let log = migrate::deploy(&db, dir.path(), name, "").unwrap_err();
    assert!(log.contains("23505"), "{log}");
    let pgm = migrate::config(&db, dir.path(), "");
    let run = pgm.run(&["diagnose", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = &run.json()[0];
    let st = r["statements"].as_array().unwrap();
    let lines: Vec<&str> = MIXED.lines().collect();
    let mut checked = 0;
    for s in st {
        let line = s["line"].as_u64().unwrap() as usize;
        let source = lines[line - 1];
        assert!(
            source.starts_with(&s["sql"].as_str().unwrap()[..10]),
            "line {line} is where the statement starts: {s}"
        );
        let expected = if source.starts_with("DO ") || source.starts_with("INSERT") {
            "unknown"
        } else if line < 28 {
            "applied"
        } else {
            "not_applied"
        };
        assert_eq!(s["verdict"], expected, "line {line}: {source}\n{s:#}");
        checked += 1;
    }
    assert_eq!(checked, 49, "every statement, comments aside: {r:#}");
    let failed = st.iter().find(|s| s["line"] == 28).unwrap();
    assert!(failed["reason"].as_str().unwrap().contains("invalid (indisvalid = false"), "{failed:#}");
    // No snapshot from before it: the catalog checks explain, and license no repair.
    assert_eq!(r["proof"], "catalog", "{r:#}");
    for kind in ["finish", "undo"] {
        let why = r["playbooks"][kind]["why"].as_str().unwrap();
        assert!(why.starts_with("not proven: no replay: no snapshot of app"), "{kind}: {why}");
    }
}

/// A finish of 300 statements (about 20 KiB of SQL) is audited whole, not cut like a child's
/// output: the record names every statement it ran, down to the last.
#[test]
fn a_long_finish_is_audited_whole() {
    let db = TestDb::new("longfin");
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), INIT, INIT_SQL);
    let columns: String = (0..300)
        .map(|i| {
            format!("ALTER TABLE \"Wide\" ADD COLUMN \"a_column_with_a_rather_long_name_{i:03}\" TEXT;\n")
        })
        .collect();
    let wide = format!(
        "CREATE TABLE \"Wide\" (\"id\" INTEGER);\nALTER TABLE \"User\" ADD COLUMN \"email\" TEXT;\n{columns}"
    );
    migrate::write_migration(dir.path(), ORDERS, &wide);
    migrate::deploy(&db, dir.path(), INIT, "").unwrap();
    let pgm = migrate::config(&db, dir.path(), "");
    pgm.snapshot("app");
    {
        let _busy = Holder::lock(&db, "\"User\"", "User");
        migrate::deploy(&db, dir.path(), ORDERS, "-c lock_timeout=300").unwrap_err();
    }
    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    let text = std::fs::read_to_string(&pgm.config).unwrap()
        + "\n"
        + r["playbooks"]["finish"]["toml"].as_str().unwrap();
    pgm.write_config(&text);
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let output = rec["steps"][0]["output"].as_str().unwrap();
    assert!(output.len() > 16 * 1024, "{} bytes", output.len());
    assert!(output.starts_with("ran 301 statement(s), proven first on a copy of the baseline"), "{output}");
    assert!(
        output.contains("a_column_with_a_rather_long_name_299") && !output.contains("bytes cut"),
        "{output}"
    );
    let audit = pgm.run(&["audit", "--json"]);
    assert!(audit.stdout.contains("a_column_with_a_rather_long_name_299"), "the audit log: {}", audit.stderr);
}
