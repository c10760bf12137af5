"""The benchmark's users: their fields and stats, and seeding them straight into a database.

`python tools/bench_users.py N`, with a service's environment (bench_setup's
Service.seed_users runs it), writes N users and their stats into the database
of DATABASE_URL (SQLite or PostgreSQL): models builds its engine from it when
first imported. The seeded stats are varied (seeded_stats), so that the
leaderboard's orders and shared ranks are as a real table's would be; the users
signed up through the API take sample_stats.
"""

import random
import sys
from pathlib import Path

SEED_BATCH = 5_000
SEED = 22  # the seeded users' stats: the same on every run and every database
NEVER_PLAYED = 0.1  # the share of seeded users who signed up and never won or lost a game


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


def seeded_stats(rng):
    """Stats as a game's players have them: a tenth never played a game, most
    played a few dozen, a few some hundreds; whole minutes of play. Small
    counts, so that many users tie (of 100,000: over 700 share each victory
    count below 30, and 2,596 a win rate of 1)."""
    if rng.random() < NEVER_PLAYED:
        sessions = rng.randint(0, 2)  # looked around, played no game
        return {
            "victory_count": 0,
            "loss_count": 0,
            "session_count": sessions,
            "total_time": 60 * sessions * rng.randint(1, 10),
        }
    games = 1 + int(rng.expovariate(1 / 30))  # mean 31; the top of 100,000: some 350
    victories = round(games * rng.betavariate(2, 2))  # skill: a win rate around one half
    sessions = max(1, round(games / rng.uniform(1, 5)))  # one to five games a session
    return {
        "victory_count": victories,
        "loss_count": games - victories,
        "session_count": sessions,
        "total_time": 60 * sessions * rng.randint(5, 45),
    }


def seed_database(number):
    """Users 1 to number and their stats, in batches, on the newest schema; then
    the counts the service keeps (models.user_count) and, on PostgreSQL, the
    id sequence past them and the planner's statistics (ANALYZE, no VACUUM)."""
    import auth
    import database
    import migrate
    import models

    migrate.upgrade()
    # One hash for every row: scrypt for each of 100,000 users would take hours.
    password_hash = auth.hash_password("bench-password")
    insert_user = database.Statement(models.users.insert())
    insert_stats = database.Statement(models.stats.insert())
    rng = random.Random(SEED)
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
                insert_stats.sql, [{"user_id": n, **seeded_stats(rng)} for n in numbers]
            )
        if not database.SQLITE:
            # Ids were given, not drawn: a sign-up through the API must not draw id 1.
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT MAX(id) FROM users))"
            )
        # The counts the service keeps with each of its own writes (models.user_count).
        cursor.execute(
            "UPDATE user_count SET n = (SELECT COUNT(*) FROM users),"
            f" with_games = (SELECT COUNT(*) FROM stats WHERE {models.PLAYED.format(t='')})"
        )
    if not database.SQLITE:
        # The planner's statistics, as autoanalyze would gather them; and no VACUUM,
        # then or amid the measurements: the visibility map stays as a bulk load
        # leaves it, which the planner prices as it does a table under writes (2% of
        # the stats updated since a VACUUM, then analyzed, gave the same plans).
        with database.writing() as db:
            cursor = db.cursor()
            for table in ("users", "stats"):
                cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            cursor.execute("ANALYZE users, stats")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the service's modules
    seed_database(int(sys.argv[1]))
