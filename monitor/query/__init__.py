"""Reading the store for the pages and the API: `search` (the search language), `tasks` (task
lists: filters, sort, paging, counts, streaming), `analytics` (the charts and tables)."""
