"""Video frames: decode and sample (decord), write small mp4s, keyframe seeking, the frame cache and prefetch."""
