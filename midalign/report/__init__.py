"""What people read after a run: statistics over seeds (:mod:`.stats`), a recipe run's Markdown
report (:mod:`.markdown`) and every plot of the package (:mod:`.plots`, which alone imports
matplotlib)."""
