//! A snapshot restores to exactly the database it came from, on both backends.

mod common;

use std::path::Path;

use common::*;

fn many_types_db() -> TestDb {
    let db = TestDb::new("src");
    psql_file(&db.name, &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/many_types.sql"));
    db
}

fn round_trip(backend: Backend, jobs: &str) {
    let src = many_types_db();
    let dst = TestDb::reserved("dst");
    let pgm = Pgmedic::new(backend, &[("app", &src.url())], "", "");
    let m = pgm.snapshot("app");
    let id = m["id"].as_str().unwrap();
    assert_eq!(m["database"], "app");
    assert_eq!(m["reason"], "manual");
    assert!(m["stored_bytes"].as_u64().unwrap() > 0 && m["stored_bytes"].as_u64() < m["raw_bytes"].as_u64());
    assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(pgm.snapshot_ids(), vec![id.to_string()]);

    let run = pgm.run(&["restore", id, "--target", &dst.name, "--create", "--jobs", jobs, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["created"], true);
    assert!(dst.exists());
    // Schema, rows, sequences, comments: pg_dump of both must be the same text.
    let (before, after) = (src.plain_dump(), dst.plain_dump());
    assert!(before.contains("all nulls") && before.contains("ünïcödé"), "fixture did not load");
    assert!(before == after, "restored database differs from its source");
    assert_eq!(dst.sql("SELECT count(*) FROM shop.customer"), "2001");
    assert_eq!(dst.sql("SELECT last_value FROM shop.invoice_no"), "4242");
}

#[test]
fn round_trip_local() {
    round_trip(Backend::Local, "1");
}

#[test]
fn round_trip_s3() {
    let s3 = S3Server::start();
    round_trip(Backend::S3(&s3), "1");
    let keys = s3.keys();
    assert!(keys.iter().all(|k| k.starts_with("test/prod/app/")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("/dump.zst")) && keys.iter().any(|k| k.ends_with("/manifest.json"))
    );
    assert_eq!(s3.uploads(), 0, "no multipart upload may stay open");
}

#[test]
fn round_trip_parallel_restore() {
    round_trip(Backend::Local, "2");
}

#[test]
fn multipart_upload_of_many_parts_round_trips() {
    let s3 = S3Server::start();
    let src = TestDb::new("big");
    fill_random(&src, 24);
    let dst = TestDb::reserved("big_dst");
    let pgm = Pgmedic::new(Backend::S3(&s3), &[("big", &src.url())], "part_size_mib = 5\n", "");
    let m = pgm.snapshot("big");
    assert!(m["stored_bytes"].as_u64().unwrap() > 10 * 1024 * 1024, "want several 5 MiB parts: {m}");
    // Every part went up with its CRC32, and the store composed them: the bytes it holds are the
    // bytes pgmedic sent, part by part.
    let dump = format!("test/prod/big/{}/dump.zst", m["id"].as_str().unwrap());
    let held = s3.crc32(&dump).expect("the store keeps a CRC32 for the dump");
    assert_eq!(held, composite_crc32(&s3.get(&dump), 5 * 1024 * 1024));
    // For a store that refuses S3's checksum headers, none are sent.
    let plain = Pgmedic::new(Backend::S3(&s3), &[("big", &src.url())], "part_checksum = \"none\"\n", "");
    let m2 = plain.snapshot("big");
    assert_eq!(s3.crc32(&format!("test/prod/big/{}/dump.zst", m2["id"].as_str().unwrap())), None);
    let run = pgm.run(&["restore", m["id"].as_str().unwrap(), "--target", &dst.name, "--create"]);
    assert_eq!(run.code, 0, "{run:?}");
    let sum = "SELECT md5(string_agg(payload, '' ORDER BY id)) FROM filler";
    assert_eq!(src.sql(sum), dst.sql(sum));
}

#[test]
fn manifest_records_versions_and_migration_rows() {
    let src = TestDb::new("prisma");
    psql_file(
        &src.name,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prisma-p3009/database.sql"),
    );
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let m = pgm.snapshot("app");
    let id = m["id"].as_str().unwrap();
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(pgm.snapshots_dir().join("app").join(id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, m, "the manifest printed is the manifest stored");
    assert_eq!(m["format_version"], 1);
    assert!(m["pg_dump_version"].as_str().unwrap().contains("pg_dump"));
    assert!(m["server_version"].as_str().unwrap().starts_with("15"));
    assert_eq!(m["compression"]["algorithm"], "zstd");
    let rows = m["migrations"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["migration_name"], "20250520130900_add_plugin_credential_model");
    assert!(
        rows[1]["finished_at"].is_null() && rows[1]["rolled_back_at"].is_null(),
        "the failed row: {}",
        rows[1]
    );
    assert!(m["globals"]["stored_bytes"].as_u64().unwrap() > 0, "roles kept with the snapshot: {m}");
    assert!(id.starts_with(&m["taken_at"].as_str().unwrap()[..4]));
}
