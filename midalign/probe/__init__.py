"""The layer-wise diagnostic: pooled sentence embeddings per layer (:mod:`.embeddings`),
cross-lingual retrieval with LASER's xsim margin (:mod:`.retrieval`), the raw states'
anisotropy (:mod:`.anisotropy`), and one `midalign probe` run with its files (:mod:`.run`)."""
