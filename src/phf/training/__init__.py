"""The second stage (``phf train``): models, the six feedback objectives, chunked log-probabilities
and the trainer that runs them over the data stage's stream."""
