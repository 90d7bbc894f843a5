//! A Prisma project around the real Prisma CLI (installed by scripts/test into .tools/prisma):
//! the JS engine with the `pg` driver adapter, `DATABASE_URL` read from the environment, so a
//! deploy needs nothing but the npm registry. Its migrations are a copy the test may edit.

use std::path::{Path, PathBuf};

pub const CONFIG: &str = "import { defineConfig } from 'prisma/config'
import { PrismaPg } from '@prisma/adapter-pg'

export default defineConfig({
  experimental: { adapter: true },
  engine: 'js',
  schema: 'prisma/schema.prisma',
  async adapter() {
    return new PrismaPg({ connectionString: process.env.DATABASE_URL! })
  },
})
";

// `engineType = \"client\"` keeps the CLI from fetching a native query engine.
pub const SCHEMA: &str = "datasource db {
  provider = \"postgresql\"
  url      = env(\"DATABASE_URL\")
}

generator client {
  provider   = \"prisma-client-js\"
  engineType = \"client\"
}

model User {
  id   Int    @id @default(autoincrement())
  name String
}
";

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project whose migrations are a copy of `migrations` (folders with migration.sql).
    pub fn new(migrations: &Path) -> Project {
        let tools = std::env::var("PGMEDIC_TEST_PRISMA")
            .expect("PGMEDIC_TEST_PRISMA: run the suite with scripts/test, which installs the Prisma CLI");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), dir.path().join("node_modules"))
            .unwrap();
        std::fs::write(dir.path().join("prisma.config.ts"), CONFIG).unwrap();
        let m = dir.path().join("prisma/migrations");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(dir.path().join("prisma/schema.prisma"), SCHEMA).unwrap();
        std::fs::write(m.join("migration_lock.toml"), "provider = \"postgresql\"\n").unwrap();
        for e in std::fs::read_dir(migrations).unwrap().map(Result::unwrap) {
            if e.path().join("migration.sql").is_file() {
                std::fs::create_dir_all(m.join(e.file_name())).unwrap();
                std::fs::copy(e.path().join("migration.sql"), m.join(e.file_name()).join("migration.sql"))
                    .unwrap();
            }
        }
        Project { dir }
    }

    pub fn migrations(&self) -> PathBuf {
        self.dir.path().join("prisma/migrations")
    }

    /// `prisma migrate deploy` as an argv for `rehearse -- …` (a shell only to change directory).
    pub fn deploy_argv(&self) -> Vec<String> {
        let script = format!(
            "cd '{}' && CHECKPOINT_DISABLE=1 exec ./node_modules/.bin/prisma migrate deploy",
            self.dir.path().display()
        );
        vec!["sh".into(), "-c".into(), script]
    }
}
