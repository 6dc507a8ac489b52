"""A run in small rooms: its identity (:mod:`.identity`), what it is built from (:mod:`.build`), its record
(:mod:`.record`) and the run itself (:mod:`.run`). Importing this package imports nothing else: the report
reads :mod:`.identity` without torch."""
