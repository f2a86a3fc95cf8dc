"""What transfers: the tasks (:mod:`.tasks`: their data, prompts, parsers and metrics), a
model's answers by generation or by likelihood (:mod:`.loglik`), and one evaluation with its
files (:mod:`.run`)."""
