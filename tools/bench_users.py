"""The benchmark's users: their fields and stats, and seeding them straight into a database.

`python tools/bench_users.py N`, with a service's environment (bench_setup's
Service.seed_users runs it), writes N users and their stats into the database
of DATABASE_URL: models builds its engine from it when first imported.
"""

import sys
from pathlib import Path

SEED_BATCH = 5_000


def sample_user_fields(number):
    return {
        "username": f"player{number}",
        "email": f"player{number}@example.com",
        "gender": ("female", "male")[number % 2],
    }


def sample_stats(number):
    return {
        "victory_count": 10 + number % 40,
        "loss_count": 5 + number % 25,
        "session_count": 15 + number % 60,
        "total_time": 3_600 + 97 * number,
    }


def seed_database(number):
    """Users 1 to number and their stats, in batches, on the newest schema."""
    import auth
    import database
    import migrate
    import models

    migrate.upgrade()
    # One hash for every row: scrypt for each of 100,000 users would take hours.
    password_hash = auth.hash_password("bench-password")
    insert_user = database.Statement(models.users.insert())
    insert_stats = database.Statement(models.stats.insert())
    with database.writing() as db:
        cursor = db.cursor()
        for first in range(1, number + 1, SEED_BATCH):
            numbers = range(first, min(first + SEED_BATCH, number + 1))
            cursor.executemany(
                insert_user.sql,
                [
                    {
                        "id": n,
                        **sample_user_fields(n),
                        "password_hash": password_hash,
                        "profile_pic": None,
                        "token_version": 0,
                    }
                    for n in numbers
                ],
            )
            cursor.executemany(
                insert_stats.sql, [{"user_id": n, **sample_stats(n)} for n in numbers]
            )
        models.recount_users(db)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the service's modules
    seed_database(int(sys.argv[1]))
