"""The peer in bench/email_ingest.py: django-helpdesk 2.6.1's `get_email` reading one IMAP folder
into its own SQLite database. Run by that bench in a process of its own (Django is configured
once per process); prints one JSON line of figures.

    python bench/helpdesk_peer.py --db PATH --port N --user U --password P [--wal]

--wal sets the journal mode kefu uses on SQLite (WAL, synchronous=NORMAL); without it the database
is on Django's defaults. Install with `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import datetime


def configure(db: str, wal: bool) -> None:
    import django
    from django.conf import settings

    options = {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"} if wal else {}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        USE_TZ=True,
        SITE_ID=1,
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db, "OPTIONS": options}
        },
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.sites",
            "django.contrib.humanize",
            "django.contrib.messages",
            "rest_framework",
            "helpdesk",
        ],
        TEMPLATES=[
            {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
        ],
        # its acknowledgement to each new ticket's submitter is rendered and "sent" in memory
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        MEDIA_ROOT=db + ".media",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,
        HELPDESK_ANON_ACCESS_RAISES_404=False,
        HELPDESK_TEAMS_MODE_ENABLED=False,  # teams need pinax-teams; email intake does not
    )
    django.setup()
    if not os.environ.get("PEER_DEBUG"):  # PEER_DEBUG=1 shows django-helpdesk's own log
        logging.disable(logging.CRITICAL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--wal", action="store_true")
    args = parser.parse_args()

    setup_started = time.perf_counter()
    configure(args.db, args.wal)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from helpdesk.models import FollowUp, Queue

    Queue.objects.create(
        title="Support", slug="support", email_address="support@kefu.test",
        allow_email_submission=True, email_box_type="imap", email_box_host="127.0.0.1",
        email_box_port=args.port, email_box_ssl=False, email_box_user=args.user,
        email_box_pass=args.password, email_box_imap_folder="INBOX", email_box_interval=0,
        logging_type="debug" if os.environ.get("PEER_DEBUG") else "none",
    )
    setup = time.perf_counter() - setup_started

    started_wall = datetime.now().astimezone()
    started = time.perf_counter()
    call_command("get_email", quiet=True)
    took = time.perf_counter() - started
    dates = sorted(FollowUp.objects.values_list("date", flat=True))
    first, last = dates[0], dates[-1]
    print(json.dumps({
        "rows": len(dates),
        "setup": setup,  # Django setup, migrations, the queue row
        "startup": (first - started_wall).total_seconds(),  # get_email's start to its first row
        "first_to_last": (last - first).total_seconds(),
        "total": took,
    }))


if __name__ == "__main__":
    main()
