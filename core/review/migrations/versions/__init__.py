"""The history's migrations, oldest first; Alembic loads each file by path."""
