-- The image an attempt's job ran, as its backend reported it at launch (Cloud Run: the
-- execution's container image, pinned by digest under image_policy digest).
ALTER TABLE attempts ADD COLUMN image text;
