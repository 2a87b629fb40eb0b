"""Developer tool, until the first release: rewrite migration 0001 from storage/models.py.

After a release, schema changes get new Alembic revisions instead (`alembic revision --autogenerate`
through storage.db.alembic_config()).
"""

from __future__ import annotations

import asyncio
import re
import tempfile

from alembic import command

from storage.db import MIGRATIONS, Database, alembic_config

TARGET = MIGRATIONS / "versions" / "0001_initial_schema.py"


async def main() -> None:
    TARGET.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/gen.db")
        async with db.engine.begin() as conn:

            def generate(sync_conn: object) -> None:
                cfg = alembic_config()
                cfg.attributes["connection"] = sync_conn
                command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")

            await conn.run_sync(generate)
        await db.dispose()
    text = TARGET.read_text()
    text = text.replace("storage.models.UTCDateTime()", "sa.DateTime()")
    text = re.sub(r"\n    # ### .* ###", "", text)
    text = re.sub(r"Create Date: .*\n", "", text)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    asyncio.run(main())
