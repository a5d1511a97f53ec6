"""A client of a loraforge server over HTTP, and the `loraforge files` / `loraforge jobs`
commands built on it. Talks to any server: nothing here touches the database or storage."""
